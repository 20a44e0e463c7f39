"""Several worker processes on one port (`--workers N`, `workers:`), and the supervisor that keeps them.

    python -m server --workers 4          # or `workers: auto` in the config: one per core

The process started is the supervisor. It loads and checks the config (a bad one exits 2 before any
worker starts), makes sure no one else listens on the port, and starts the workers: each one a whole
gateway (`server.app.serve`) bound with SO_REUSEPORT, so that the kernel spreads new connections over
them. With port 0 the first worker picks the port and the others join it. Once every worker is ready the
supervisor logs the one `listening on HOST:PORT` line. It replaces a worker that dies, saying so with its
pid and exit code or signal; on SIGTERM or SIGINT it sends SIGTERM to every worker, for one graceful
drain, and waits for them. Its exit status: 0 after a clean drain; 1 when a worker failed to start, kept
dying (see `RestartPolicy`), did not drain cleanly or had to be killed, or the port was taken.

Workers are started with multiprocessing's `spawn`, not `fork`: a fresh interpreter each (gRPC's core
does not survive a fork once its threads run), handed the config the supervisor checked, pickled, so that
a worker started an hour later serves the same config as the first whatever the file says by then. A
worker whose supervisor dies (even by SIGKILL) notices it and drains on its own.

Metrics (when `metrics.listen` is set): the supervisor owns a temporary directory for prometheus-client's
multiprocess mode, serves `/metrics` from it and forgets a dead worker's live gauges; what each metric
means across workers is in server/observe/metrics.py.
"""

from server.workers.restarts import RestartPolicy, describe_exit
from server.workers.supervisor import MULTIPROC_DIR_ENV, Supervisor, check_port_free, supervise

__all__ = ["MULTIPROC_DIR_ENV", "RestartPolicy", "Supervisor", "check_port_free", "describe_exit", "supervise"]
