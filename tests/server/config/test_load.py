"""Behaviour of the gateway configuration: the YAML file, environment overrides and the embedded default."""

from __future__ import annotations

import hashlib
import string
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from server import defaults
from server.config import (
    AuthConfig,
    ClientToken,
    ConfigError,
    GatewayConfig,
    InteractiveConfig,
    MetricsConfig,
    ModelConfig,
    ProviderConfig,
    TLSConfig,
    default_config,
    is_loopback_host,
    load_config,
    parse_listen,
)
from server.config.checks import checked
from server.errors import scrub
from server.routing.catalog import DEFAULT_CAPABILITIES
from tests.certs import make_certs

CI_TOKEN = "ci-token-7f3a9c0e5b1d"
DEV_TOKEN = "dev-token-2b8e4d6f0a1c"
OPENAI_KEY = "sk-test-openai-key-0123456789abcdef"
SECRETS = {"DEV_TOKEN": DEV_TOKEN, "OPENAI_API_KEY": OPENAI_KEY}


# A demo model caches the prompt and reasons (server/config/models.py KIND_CAPABILITIES).
CACHING = DEFAULT_CAPABILITIES | {"embeddings", "prompt_caching", "reasoning", "vision"}  # a demo model's


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# The shape of the README example: every section, relative TLS paths, both kinds of token.
EXAMPLE = f"""
listen: 0.0.0.0:50051
tls:
  cert_file: certs/server.crt
  key_file: certs/server.key
auth:
  tokens:
    - name: ci
      sha256: {sha256_hex(CI_TOKEN)}
    - name: dev
      env: DEV_TOKEN
providers:
  - name: openai
    kind: openai
    base_url: https://api.openai.com/v1/
    api_key_env: OPENAI_API_KEY
  - name: demo
    kind: demo
models:
  - name: gpt-4o-mini
    provider: openai
  - name: fast
    provider: openai
    upstream_model: gpt-4.1-mini
    max_tokens: 1024
  - name: demo
    provider: demo
grace_period_s: 5
max_request_bytes: 65536
log_level: debug
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def write_example(folder: Path, text: str = EXAMPLE) -> Path:
    """The README-shaped example in `folder`, with the certificate and key it names in `folder`/certs."""
    (folder / "certs").mkdir()
    make_certs(folder / "certs")
    return write(folder, text)


def problems(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(error.value).splitlines()


# --- the file -------------------------------------------------------------------------------------------


def test_the_readme_example_loads_into_typed_config(tmp_path: Path) -> None:
    config = load_config(write_example(tmp_path), env=SECRETS)

    assert config == GatewayConfig(
        listen="0.0.0.0:50051",
        tls=TLSConfig(cert_file=tmp_path / "certs/server.crt", key_file=tmp_path / "certs/server.key"),
        auth=AuthConfig(
            tokens=(
                ClientToken("ci", hashlib.sha256(CI_TOKEN.encode()).digest()),
                ClientToken("dev", hashlib.sha256(DEV_TOKEN.encode()).digest()),
            )
        ),
        providers=(
            ProviderConfig(
                name="openai",
                kind="openai",
                base_url="https://api.openai.com/v1",
                api_key_env="OPENAI_API_KEY",
                api_key=OPENAI_KEY,
            ),
            ProviderConfig(name="demo", kind="demo"),
        ),
        models=(
            ModelConfig(name="gpt-4o-mini", provider="openai", upstream_model="gpt-4o-mini"),
            ModelConfig(name="fast", provider="openai", upstream_model="gpt-4.1-mini", max_tokens=1024),
            ModelConfig(name="demo", provider="demo", upstream_model="demo", capabilities=CACHING),
        ),
        grace_period_s=5.0,
        max_request_bytes=65536,
        log_level="DEBUG",
    )


def test_tls_paths_are_relative_to_the_config_file_not_the_working_directory(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "gateway"
    folder.mkdir(parents=True)
    config = load_config(write_example(folder), env=SECRETS)

    assert config.tls == TLSConfig(cert_file=folder / "certs/server.crt", key_file=folder / "certs/server.key")


def test_absolute_tls_paths_are_kept(tmp_path: Path) -> None:
    (tmp_path / "ssl").mkdir()
    files = make_certs(tmp_path / "ssl")
    text = EXAMPLE.replace("certs/server.crt", str(files.server_cert))
    text = text.replace("certs/server.key", str(files.server_key))
    config = load_config(write(tmp_path, text), env=SECRETS)

    assert config.tls == TLSConfig(cert_file=files.server_cert, key_file=files.server_key)


def test_the_sections_left_out_take_their_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "models: [{name: demo, provider: demo}]\nproviders: [{name: demo, kind: demo}]")
    )

    assert config == GatewayConfig(
        providers=(ProviderConfig(name="demo", kind="demo"),),
        models=(ModelConfig(name="demo", provider="demo", upstream_model="demo", capabilities=CACHING),),
    )


DEMO = "providers: [{name: demo, kind: demo}]\nmodels: [{name: demo, provider: demo}]\n"


def test_metrics_are_off_unless_a_listen_address_is_configured(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, DEMO), env={}).metrics == MetricsConfig(listen=None)
    on = load_config(write(tmp_path, DEMO + "metrics: {listen: '0.0.0.0:9464'}"), env={})
    assert on.metrics == MetricsConfig(listen="0.0.0.0:9464")


def test_every_problem_of_the_metrics_section_is_listed_with_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, DEMO + "metrics: {listen: 9464, path: /m}"), env={})

    assert problems(error) == [
        "metrics.path: unknown key (known: listen)",
        "metrics.listen: expected HOST:PORT, got '9464'",
    ]


def test_the_metrics_section_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, DEMO + "metrics: 127.0.0.1:9464"), env={})

    assert problems(error) == ["metrics: expected a mapping, got str"]


def test_a_model_max_tokens_above_the_gateway_limit_is_capped_at_the_limit(tmp_path: Path) -> None:
    text = "providers: [{name: demo, kind: demo}]\nmodels: [{name: demo, provider: demo, max_tokens: 10000000}]"

    (model,) = load_config(write(tmp_path, text), env={}).models

    assert model.max_tokens == defaults.MAX_TOKENS_LIMIT


def test_every_problem_of_a_file_is_listed_at_once(tmp_path: Path) -> None:
    text = string.Template("""
        listen: 127.0.0.1:50051
        colour: blue
        auth:
          tokens:
            - {name: short, sha256: abc123}
            - {name: not-hex, sha256: "$not_hex"}
            - {name: unset, env: NO_SUCH_VARIABLE}
            - {name: both, sha256: "$dev_digest", env: DEV_TOKEN}
            - {name: neither}
            - {name: typo, sha265: abc}
        providers:
          - {name: a, kind: telepathy}
          - {kind: openai, base_url: "https://x.example/v1"}
          - {name: c, kind: openai, api_key_env: NO_SUCH_KEY}
          - {name: d, kind: demo, read_timeout_s: soon}
        models:
          - {provider: a}
          - {name: m}
          - {name: n, provider: d, max_tokens: 0, alias: x}
        grace_period_s: -1
        max_request_bytes: lots
        """).substitute(not_hex="zz" + "0" * 62, dev_digest=sha256_hex(DEV_TOKEN))

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={"DEV_TOKEN": DEV_TOKEN})

    assert problems(error) == [
        "colour: unknown key (known: aliases, auth, circuit_breaker, client_defaults, clients, grace_period_s, "
        "interactive, keepalive, limits, listen, log, log_level, max_request_bytes, metrics, models, providers, "
        "retry, tls, workers)",
        "auth.tokens[0].sha256: expected 64 hex characters (sha256 of the token)",
        "auth.tokens[1].sha256: expected 64 hex characters (sha256 of the token)",
        "auth.tokens[2].env: environment variable NO_SUCH_VARIABLE is not set or empty",
        "auth.tokens[3]: give exactly one of sha256 (hex digest of the token) or env",
        "auth.tokens[4]: give exactly one of sha256 (hex digest of the token) or env",
        "auth.tokens[5].sha265: unknown key (known: env, name, sha256)",
        "auth.tokens[5]: give exactly one of sha256 (hex digest of the token) or env",
        "providers[0].kind: expected one of openai, anthropic, gemini, demo, got 'telepathy'",
        "providers[1].name: required",
        "providers[2].base_url: required, an http:// or https:// URL",
        "providers[2].api_key_env: environment variable NO_SUCH_KEY is not set or empty",
        "providers[3].read_timeout_s: expected a number, got 'soon'",
        "models[0].name: required",
        "models[1].provider: required",
        "models[2].alias: unknown key (known: aliases, capabilities, deployments, fallbacks, max_tokens, name, price, "
        "provider, resume, shadow, upstream_model)",
        "models[2].max_tokens: must be at least 1",
        "grace_period_s: must be at least 0",
        "max_request_bytes: expected a number, got 'lots'",
    ]


def test_every_cross_reference_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = """
        providers:
          - {name: demo, kind: demo}
          - {name: demo, kind: demo}
        models:
          - {name: m, provider: demo}
          - {name: m, provider: demo}
          - {name: x, provider: nowhere}
        log_level: chatty
        """

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})

    assert problems(error) == [
        "log_level: expected DEBUG, INFO, WARNING or ERROR, got 'CHATTY'",
        "providers: name 'demo' is used more than once",
        "models: name 'm' is used more than once",
        "models: model 'x' names provider 'nowhere', which is not configured",
    ]


def test_field_and_cross_reference_problems_are_listed_together(tmp_path: Path) -> None:
    text = "colour: blue\nproviders: [{name: demo, kind: demo}]\nmodels: [{name: x, provider: nowhere}]"

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})

    assert problems(error) == [
        "colour: unknown key (known: aliases, auth, circuit_breaker, client_defaults, clients, grace_period_s, "
        "interactive, keepalive, limits, listen, log, log_level, max_request_bytes, metrics, models, providers, "
        "retry, tls, workers)",
        "models: model 'x' names provider 'nowhere', which is not configured",
    ]


def test_a_cross_reference_problem_names_the_model_not_a_shifted_index(tmp_path: Path) -> None:
    text = """
        providers: [{name: demo, kind: demo}]
        models: [{name: m}, {name: d, provider: demo}, {name: x, provider: nope}]
        """

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})

    assert problems(error) == [
        "models[0].provider: required",
        "models: model 'x' names provider 'nope', which is not configured",
    ]


def test_a_model_of_an_invalid_provider_gets_no_follow_on_problem(tmp_path: Path) -> None:
    text = "providers: [{name: a, kind: telepathy}]\nmodels: [{name: m, provider: a}]"

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})

    assert problems(error) == ["providers[0].kind: expected one of openai, anthropic, gemini, demo, got 'telepathy'"]


def test_the_listen_flag_wins_over_a_non_loopback_address_in_the_environment() -> None:
    config = load_config(None, env={"GATEWAY_LISTEN": "0.0.0.0:50051"}, listen="127.0.0.1:0")
    assert config.listen == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "models: at least one model is required", id="empty file"),
        pytest.param("- a\n- b\n", "config: expected a mapping, got list", id="not a mapping"),
        pytest.param("providers: {name: demo}\nmodels: []\n", "providers: expected a list, got dict", id="not a list"),
        pytest.param("listen: [127.0.0.1\n", "is not valid YAML", id="not YAML"),
        pytest.param("auth: {tokens: []}\n", "auth.tokens: at least one token is required", id="auth without tokens"),
        pytest.param("grace_period_s: .inf\n", "grace_period_s: expected a finite number, got inf", id="infinite"),
    ],
)
def test_a_malformed_file_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(
            b"listen: [127.0.0.1\n",
            "line 2, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 1, "
            "column 9)",
            id="unclosed list",
        ),
        pytest.param(
            b"log_level: INFO\n  listen: 127.0.0.1:1\n", "line 2, column 9: mapping values are not allowed here"
        ),
        pytest.param(
            b"listen:\t127.0.0.1:1\n\tlog_level: INFO\n",
            "line 1, column 8: found character '\\t' that cannot start any token (while scanning for the next token)",
            id="tab",
        ),
        pytest.param(b"log_level: \xff\n", "character 11: unacceptable character #x00ff: invalid start byte"),
    ],
)
def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(content)

    with pytest.raises(ConfigError) as error:
        load_config(path, env={})

    assert problems(error) == [f"config file {path} is not valid YAML: {problem}"]


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nowhere\.yaml: No such file or directory"):
        load_config(tmp_path / "nowhere.yaml", env={})


def test_no_path_means_the_embedded_default() -> None:
    assert load_config(None, env={}) == default_config(env={})


# --- the environment ------------------------------------------------------------------------------------

OVERRIDES = [
    # (variable, value, field, value in the config)
    ("GATEWAY_LISTEN", "127.0.0.1:6000", "listen", "127.0.0.1:6000"),
    ("GATEWAY_GRACE_PERIOD_S", "2.5", "grace_period_s", 2.5),
    ("GATEWAY_GRACE_PERIOD_S", "0", "grace_period_s", 0.0),
    ("GATEWAY_MAX_REQUEST_BYTES", "2048", "max_request_bytes", 2048),
    ("GATEWAY_LOG_LEVEL", "warning", "log_level", "WARNING"),
    ("GATEWAY_LOG_FORMAT", "JSON", "log_format", "json"),
    ("GATEWAY_METRICS_LISTEN", "127.0.0.1:9464", "metrics", MetricsConfig(listen="127.0.0.1:9464")),
]


@pytest.mark.parametrize(("variable", "value", "field", "expected"), OVERRIDES)
def test_the_environment_overrides_the_file(
    tmp_path: Path, variable: str, value: str, field: str, expected: object
) -> None:
    path = write_example(tmp_path, EXAMPLE.replace("0.0.0.0:50051", "127.0.0.1:50051"))

    config = load_config(path, env={**SECRETS, variable: value})

    assert getattr(config, field) == expected


@pytest.mark.parametrize(("variable", "value", "field", "expected"), OVERRIDES)
def test_the_environment_overrides_the_embedded_default(
    variable: str, value: str, field: str, expected: object
) -> None:
    assert getattr(default_config(env={variable: value}), field) == expected


def test_an_empty_variable_is_the_same_as_an_unset_one() -> None:
    empty = {var: "" for var, *_ in OVERRIDES}

    assert default_config(env=empty) == default_config(env={})


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"GATEWAY_GRACE_PERIOD_S": "soon"}, "GATEWAY_GRACE_PERIOD_S: expected a number, got 'soon'"),
        ({"GATEWAY_GRACE_PERIOD_S": "-1"}, "GATEWAY_GRACE_PERIOD_S: must be at least 0"),
        ({"GATEWAY_MAX_REQUEST_BYTES": "1MB"}, "GATEWAY_MAX_REQUEST_BYTES: expected a number, got '1MB'"),
        ({"GATEWAY_LOG_LEVEL": "verbose"}, "log_level: expected DEBUG, INFO, WARNING or ERROR, got 'VERBOSE'"),
        ({"GATEWAY_LOG_FORMAT": "xml"}, "log.format: expected text or json, got 'xml'"),
        ({"GATEWAY_LISTEN": "50051"}, "listen: expected HOST:PORT, got '50051'"),
        ({"GATEWAY_METRICS_LISTEN": "9464"}, "metrics.listen: expected HOST:PORT, got '9464'"),
        ({"GATEWAY_LISTEN": "0.0.0.0:50051"}, "listen: refusing to serve without auth on non-loopback address"),
    ],
)
def test_a_bad_environment_value_is_a_config_error(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        default_config(env=env)

    assert problems(error)[0].startswith(problem)


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("variable", ["GATEWAY_GRACE_PERIOD_S", "GATEWAY_MAX_REQUEST_BYTES"])
def test_a_number_that_is_not_finite_is_a_config_error(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        default_config(env={variable: value})

    assert problems(error) == [f"{variable}: expected a finite number, got {value!r}"]


# --- the embedded default -------------------------------------------------------------------------------


def test_the_embedded_default_is_the_offline_demo_on_loopback() -> None:
    assert default_config(env={}) == GatewayConfig(
        listen="127.0.0.1:50051",
        providers=(ProviderConfig(name="demo", kind="demo"),),
        models=(ModelConfig(name="demo", provider="demo", upstream_model="demo", capabilities=CACHING),),
    )


@pytest.mark.parametrize(
    ("env", "base_url"),
    [
        ({"OPENAI_API_KEY": OPENAI_KEY}, "https://api.openai.com/v1"),
        ({"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, "http://127.0.0.1:8000/v1"),
    ],
)
def test_an_openai_key_enables_the_openai_preset_beside_the_demo(env: dict[str, str], base_url: str) -> None:
    config = default_config(env=env)

    assert [(p.name, p.kind, p.base_url, p.api_key_env) for p in config.providers] == [
        ("demo", "demo", "", ""),
        ("openai", "openai", base_url, "OPENAI_API_KEY"),
    ]
    # The preset's models come from the built-in catalog (tests/server/test_routing.py), not the config.
    assert [(m.name, m.provider, m.upstream_model) for m in config.models] == [("demo", "demo", "demo")]


def test_openai_base_url_alone_adds_nothing() -> None:
    assert default_config(env={"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}) == default_config(env={})


def test_the_embedded_openai_provider_carries_the_key_and_registers_it_as_a_secret() -> None:
    key = "sk-embedded-default-key-5566778899"

    (_, openai) = default_config(env={"OPENAI_API_KEY": key}).providers

    assert openai.api_key == key
    assert key not in scrub(f"upstream said: bad key {key}")


# --- listening without auth -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:50051", ("::1", 50051)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_parse_listen_splits_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["50051", ":50051", "localhost:", "localhost:http", "localhost:65536", "h:-1"])
def test_parse_listen_refuses_what_is_not_host_and_port(listen: str) -> None:
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_listen(listen)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "127.0.0.2:50051", "[::1]:50051", "localhost:50051"])
def test_no_auth_is_allowed_on_loopback(listen: str) -> None:
    assert default_config(env={}, listen=listen).listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "192.168.1.20:50051", "[::]:50051", "gateway.example.com:50051"])
def test_no_auth_is_refused_on_any_other_address(listen: str) -> None:
    host, _ = parse_listen(listen)

    with pytest.raises(ConfigError) as error:
        default_config(env={}, listen=listen)

    assert problems(error) == [
        f"listen: refusing to serve without auth on non-loopback address {host}; configure clients "
        "(or auth.tokens), or listen on 127.0.0.1"
    ]


def test_with_auth_any_address_is_allowed(tmp_path: Path) -> None:
    assert load_config(write_example(tmp_path), env=SECRETS, listen="[::]:443").listen == "[::]:443"


# --- secrets --------------------------------------------------------------------------------------------


def test_secrets_are_not_in_the_repr_of_the_config(tmp_path: Path) -> None:
    config = load_config(write_example(tmp_path), env=SECRETS)
    shown = repr(config) + str(config) + repr(config.providers) + repr(config.auth)

    for secret in (OPENAI_KEY, DEV_TOKEN, sha256_hex(CI_TOKEN), sha256_hex(DEV_TOKEN)):
        assert secret not in shown
    assert "OPENAI_API_KEY" in shown  # the name of the variable is not a secret, and helps


def test_secrets_are_registered_for_scrubbing(tmp_path: Path) -> None:
    load_config(write_example(tmp_path), env=SECRETS)

    assert scrub(f"echo: {OPENAI_KEY} / {DEV_TOKEN}") == "echo: [REDACTED] / [REDACTED]"


def test_secrets_are_not_in_config_errors(tmp_path: Path) -> None:
    text = EXAMPLE.replace("listen: 0.0.0.0:50051", "listen: 127.0.0.1:50051\ncolour: blue")
    # A token pasted where its digest belongs is not echoed back either.
    text = text.replace(sha256_hex(CI_TOKEN), CI_TOKEN)

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env=SECRETS)

    message = str(error.value)
    assert "colour: unknown key" in message
    assert "auth.tokens[0].sha256: expected 64 hex characters" in message
    for secret in (OPENAI_KEY, DEV_TOKEN, CI_TOKEN):
        assert secret not in message


# --- interactive ----------------------------------------------------------------------------------------

DEMO_ONLY = "providers: [{name: demo, kind: demo}]\nmodels: [{name: demo, provider: demo}]\n"


def test_interactive_limits_default_to_defaults_py(tmp_path: Path) -> None:
    limits = load_config(write(tmp_path, DEMO_ONLY), env={}).interactive
    assert limits == InteractiveConfig()
    assert (limits.max_in_flight, limits.queue_size) == (
        defaults.INTERACTIVE_MAX_IN_FLIGHT,
        defaults.INTERACTIVE_QUEUE_SIZE,
    )


def test_interactive_limits_are_read_from_the_file(tmp_path: Path) -> None:
    text = DEMO_ONLY + "interactive: {max_in_flight: 4, queue_size: 8, max_history_messages: 10}\n"
    limits = load_config(write(tmp_path, text), env={}).interactive
    assert limits == InteractiveConfig(max_in_flight=4, queue_size=8, max_history_messages=10)


def test_every_interactive_problem_is_listed(tmp_path: Path) -> None:
    text = DEMO_ONLY + "interactive: {max_in_fligth: 4, queue_size: 0, max_history_bytes: lots}\n"
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})
    assert problems(error) == [
        "interactive.max_in_fligth: unknown key (known: max_history_bytes, max_history_messages, max_in_flight, "
        "max_queued_turns, queue_size)",
        "interactive.max_history_bytes: expected a number, got 'lots'",
        "interactive.queue_size: must be at least 1",
    ]


# --- log ---------------------------------------------------------------------------------------------------


def test_the_log_section_sets_the_level_and_the_format(tmp_path: Path) -> None:
    text = """
        providers: [{name: demo, kind: demo}]
        models: [{name: demo, provider: demo}]
        log: {level: debug, format: json}
        """

    config = load_config(write(tmp_path, text), env={})

    assert (config.log_level, config.log_format) == ("DEBUG", "json")


def test_logs_are_text_unless_asked_otherwise() -> None:
    assert default_config(env={}).log_format == "text"


def test_every_log_problem_is_listed_with_the_known_keys(tmp_path: Path) -> None:
    text = """
        providers: [{name: demo, kind: demo}]
        models: [{name: demo, provider: demo}]
        log_level: info
        log: {level: debug, format: yaml, colour: blue}
        """

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})

    assert problems(error) == [
        "log.colour: unknown key (known: format, level)",
        "log.level: give either log.level or the top-level log_level, not both",
        "log.format: expected text or json, got 'yaml'",
    ]


# --- TLS files ------------------------------------------------------------------------------------------


def remove_the_certificate(certs: Path) -> None:
    (certs / "server.crt").unlink()


def make_the_key_a_folder(certs: Path) -> None:
    (certs / "server.key").unlink()
    (certs / "server.key").mkdir()


def swap_certificate_and_key(certs: Path) -> None:
    cert, key = (certs / "server.crt").read_bytes(), (certs / "server.key").read_bytes()
    (certs / "server.crt").write_bytes(key)
    (certs / "server.key").write_bytes(cert)


def write_a_secret_where_the_key_belongs(certs: Path) -> None:
    (certs / "server.key").write_text(f"token={CI_TOKEN}\n")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        pytest.param(remove_the_certificate, ["tls.cert_file: {certs}/server.crt: no such file"], id="missing"),
        pytest.param(
            make_the_key_a_folder, ["tls.key_file: {certs}/server.key: cannot read it: Is a directory"], id="unreadable"
        ),
        pytest.param(
            swap_certificate_and_key,
            [
                'tls.cert_file: {certs}/server.crt: not a PEM certificate (no "-----BEGIN CERTIFICATE-----" line)',
                'tls.key_file: {certs}/server.key: not a PEM private key (no "-----BEGIN PRIVATE KEY-----" line)',
            ],
            id="swapped",
        ),
        pytest.param(
            write_a_secret_where_the_key_belongs,
            ['tls.key_file: {certs}/server.key: not a PEM private key (no "-----BEGIN PRIVATE KEY-----" line)'],
            id="not PEM",
        ),
    ],
)
def test_a_tls_file_that_cannot_serve_is_a_problem_naming_it(
    tmp_path: Path, damage: Callable[[Path], None], expected: list[str]
) -> None:
    path = write_example(tmp_path, EXAMPLE.replace("log_level: debug", "log_level: debug\ncolour: blue"))
    damage(tmp_path / "certs")

    with pytest.raises(ConfigError) as error:
        load_config(path, env=SECRETS)

    # Reported with the file's other problems, and never with the content of the file.
    assert problems(error) == [
        "colour: unknown key (known: aliases, auth, circuit_breaker, client_defaults, clients, grace_period_s, "
        "interactive, keepalive, limits, listen, log, log_level, max_request_bytes, metrics, models, providers, "
        "retry, tls, workers)",
        *(line.format(certs=tmp_path / "certs") for line in expected),
    ]
    assert CI_TOKEN not in str(error.value)


def test_tls_files_are_checked_whatever_the_source_of_the_config(tmp_path: Path) -> None:
    config = GatewayConfig(
        tls=TLSConfig(cert_file=tmp_path / "gone.crt", key_file=tmp_path / "gone.key"),
        providers=(ProviderConfig(name="demo", kind="demo"),),
        models=(ModelConfig(name="demo", provider="demo", upstream_model="demo", capabilities=CACHING),),
    )

    with pytest.raises(ConfigError) as error:
        checked(config)

    assert problems(error) == [
        f"tls.cert_file: {tmp_path}/gone.crt: no such file",
        f"tls.key_file: {tmp_path}/gone.key: no such file",
    ]


def test_a_provider_with_a_list_of_key_variables_has_a_pool_of_keys_and_a_signing_secret(tmp_path: Path) -> None:
    text = """
        providers:
          - {name: o, kind: openai, base_url: "https://x.example/v1", api_key_env: [KEY_A, KEY_B, KEY_C],
             signing_secret_env: SIGNING}
        models:
          - {name: m, provider: o}
        """
    env = {"KEY_A": "sk-a-123456789", "KEY_B": "sk-b-123456789", "KEY_C": "sk-c-123456789", "SIGNING": "s3cret-xyz"}
    provider = next(p for p in load_config(write(tmp_path, text), env=env).providers if p.name == "o")

    assert (provider.api_key_env, provider.api_key) == ("KEY_A", "sk-a-123456789")
    assert [(k.env, k.value) for k in provider.extra_api_keys] == [
        ("KEY_B", "sk-b-123456789"),
        ("KEY_C", "sk-c-123456789"),
    ]
    assert (provider.signing_secret_env, provider.signing_secret) == ("SIGNING", "s3cret-xyz")
    assert "sk-b-123456789" not in repr(provider)
    assert "s3cret-xyz" not in repr(provider)
    assert scrub("key sk-c-123456789 and secret s3cret-xyz") == "key [REDACTED] and secret [REDACTED]"


def test_every_problem_of_a_key_pool_is_listed(tmp_path: Path) -> None:
    text = """
        providers:
          - {name: a, kind: openai, base_url: "https://x.example/v1", api_key_env: []}
          - {name: b, kind: openai, base_url: "https://x.example/v1", api_key_env: [KEY_A, 7]}
          - {name: c, kind: openai, base_url: "https://x.example/v1", api_key_env: [KEY_A, KEY_A]}
          - {name: d, kind: openai, base_url: "https://x.example/v1", api_key_env: [KEY_A, NO_SUCH_KEY]}
          - {name: e, kind: openai, base_url: "https://x.example/v1", api_key_env: KEY_A, signing_secret_env: NOPE}
        """
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={"KEY_A": "sk-a-123456789"})

    assert problems(error) == [
        "providers[0].api_key_env: expected a name or a non-empty list of them",
        "providers[1].api_key_env: expected a name or a non-empty list of them",
        "providers[2].api_key_env: a name is listed twice",
        "providers[3].api_key_env: environment variable NO_SUCH_KEY is not set or empty",
        "providers[4].signing_secret_env: environment variable NOPE is not set or empty",
        "models: at least one model is required",
    ]


def test_keys_can_be_read_from_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "one").write_text("sk-from-file-1-abcdef\n")
    (tmp_path / "keys" / "two").write_text("sk-from-file-2-abcdef")
    text = """
        providers:
          - {name: o, kind: openai, base_url: "https://x.example/v1", api_key_file: [keys/one, keys/two]}
        models:
          - {name: m, provider: o}
        """
    provider = next(p for p in load_config(write(tmp_path, text), env={}).providers if p.name == "o")

    assert (provider.api_key_env, provider.api_key) == ("keys/one", "sk-from-file-1-abcdef")
    assert [(k.env, k.value) for k in provider.extra_api_keys] == [("keys/two", "sk-from-file-2-abcdef")]
    assert scrub("sk-from-file-2-abcdef") == "[REDACTED]"


def test_every_problem_of_key_files_is_listed(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    text = """
        providers:
          - {name: a, kind: openai, base_url: "https://x.example/v1", api_key_file: missing}
          - {name: b, kind: openai, base_url: "https://x.example/v1", api_key_file: empty}
          - {name: c, kind: openai, base_url: "https://x.example/v1", api_key_file: empty, api_key_env: K}
        """
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={"K": "sk-k-0123456789"})

    assert problems(error) == [
        f"providers[0].api_key_file: cannot read {tmp_path / 'missing'}: No such file or directory",
        f"providers[1].api_key_file: {tmp_path / 'empty'} is empty",
        "providers[2]: give api_key_env or api_key_file, not both",
        f"providers[2].api_key_file: {tmp_path / 'empty'} is empty",
        "models: at least one model is required",
    ]


def test_a_whole_number_option_names_its_real_floor(tmp_path: Path) -> None:
    text = """
        providers:
          - {name: o, kind: openai, base_url: "https://x.example/v1", max_response_bytes: 0, read_buffer_bytes: 0}
        models:
          - {name: m, provider: o}
        """
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), env={})

    assert problems(error) == [
        "providers[0].max_response_bytes: must be at least 1",
        "providers[0].read_buffer_bytes: must be at least 1",
    ]
