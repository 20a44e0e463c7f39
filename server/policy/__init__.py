"""The policy seam: where per-call policies (allowed models, quotas, budgets, fair queuing, accounting) plug in.

seam.py   CallContext (one per call or InteractiveStream turn), the Policy interface, and the Seam that
          every Generate, StreamGenerate and InteractiveStream turn passes through, once
"""
