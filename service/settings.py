"""Server settings, declared once: every field is an ``s2loop serve`` option (generated
by pydantic-settings' CLI support, its help the field's description) and an
environment variable ``S2LOOP_<FIELD>`` (``S2LOOP_BACKEND=spinnaker2``,
``S2LOOP_BOARD_ETH_IP=192.168.1.17``, ...); options win over the environment."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hw.artifact import default_models_dir

#: coalescing window where one backend call runs several copies (measured: bench fleet)
DEFAULT_BATCH_WINDOW_MS = 2.0

#: backend names the server knows besides ``module:Class`` specs
BACKEND_ALIASES = {"reference": "agent.reference:ReferenceBackend"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="S2LOOP_",
        extra="ignore",
        cli_prog_name="s2loop serve",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    backend: str = Field(
        "emulator",
        description="primary backend: emulator | spinnaker2 | reference | module:Class",
    )
    fallback: str = Field(
        "emulator",
        description="backend that answers when the primary fails or times out: emulator | none "
        "(ignored when the primary is the emulator itself)",
    )
    models: Path = Field(
        default_factory=default_models_dir,
        description="folder whose *.s2l files are served (default: the shipped models/)",
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (s2loop serve)")

    board_eth_ip: str | None = Field(None, description="SpiNNaker2 board address (spinnaker2)")
    reference_device: str = Field(
        "cpu", description="torch device of the float reference backend: cpu | cuda (reference)"
    )
    sys_tick_in_s: float = Field(1e-3, gt=0, description="chip tick length, seconds")

    deadline_ms: float = Field(
        1000.0, gt=0, description="per-request deadline; past it the answer is 504"
    )
    primary_timeout_ms: float | None = Field(
        None,
        gt=0,
        description="time the primary backend gets before the fallback answers; default: "
        "80% of the deadline when a fallback exists, else the whole deadline",
    )
    primary_retry_s: float = Field(
        5.0,
        ge=0,
        description="after a primary failure, requests go straight to the fallback for this long",
    )
    queue_size: int = Field(
        16, ge=0, description="requests that may wait for a busy backend; beyond: 429"
    )
    backend_threads: int = Field(
        2, ge=1, description="worker threads for thread-safe backends (the board always gets 1)"
    )
    inline_max_batch: int = Field(
        16,
        ge=0,
        description="batches up to this size run on the event loop for inline-safe backends "
        "(the emulator: tens of microseconds, a thread hop would cost more); 0 = never",
    )
    batch_window_ms: float | None = Field(
        None,
        ge=0,
        description="request coalescing: single observations for one model arriving within "
        "this window share one backend call (up to the copies one run holds); default: "
        f"{DEFAULT_BATCH_WINDOW_MS:g} ms for backends that run several copies at once (the "
        "board), off otherwise; "
        "0 = off",
    )
    max_body_bytes: int = Field(1 << 20, ge=64, description="largest request body accepted")
    max_batch: int = Field(4096, ge=1, description="most observations in one batch request")

    reload_token: SecretStr | None = Field(
        None, description="bearer token for POST /v1/models/{name}/reload; unset = route off"
    )
    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated API keys: /v1/act*, /v1/models* and the TCP endpoint "
        "then need 'Authorization: Bearer <key>' (TCP: a hello frame); unset = open",
    )
    tcp_bind: str | None = Field(
        None,
        description="HOST:PORT of the low-latency TCP endpoint (length-prefixed msgpack "
        "frames); unset = off",
    )
    tcp_hello_timeout_s: float = Field(
        5.0,
        gt=0,
        description="a new TCP connection's TLS handshake (with a certificate), then its "
        "first frame (the hello when keys are on), must each arrive within this; else closed",
    )
    tcp_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a TCP connection with no frame and no answer in flight for this long is "
        "closed (the SDK reconnects and resends on its next request)",
    )
    tcp_read_timeout_s: float = Field(
        5.0,
        gt=0,
        description="a TCP frame that has started must arrive in full within this, and a "
        "client that reads no answers for this long is closed",
    )
    tcp_max_connections: int = Field(
        1024,
        ge=1,
        description="open TCP connections at most; past it a new one gets a 503 "
        "too_many_connections error frame and is closed",
    )
    backlog: int = Field(
        2048, ge=1, description="listen backlog of the HTTP and the TCP socket (uvicorn's default)"
    )
    record_dir: Path | None = Field(
        None, description="flight recorder: every answered act as Parquet rows here; unset = off"
    )
    record_rotate_rows: int = Field(50_000, ge=1, description="rows per record file at most")
    record_rotate_s: float = Field(60.0, gt=0, description="seconds before a record file closes")
    record_queue_rows: int = Field(
        100_000, ge=1, description="rows waiting to be written; beyond: dropped and counted"
    )
    shadow: str | None = Field(
        None,
        description="shadow models, MODEL=PATH[,MODEL=PATH...]: each runs beside the live "
        "model on the same observations, off the hot path, compared live",
    )
    ssl_certfile: Path | None = Field(
        None,
        description="TLS certificate (PEM): then HTTP is HTTPS, WebSocket WSS and the TCP "
        "endpoint TLS on the same port (no plaintext anywhere)",
    )
    ssl_keyfile: Path | None = Field(
        None, description="TLS private key (PEM; unset: in the certificate file)"
    )
    degraded_status: int = Field(
        200,
        description="/readyz status while serving from the fallback (200, or 503 to take "
        "the instance out of rotation)",
    )
    fast_path: bool = Field(
        True,
        description="serve POST /v1/act and /v1/act/batch as plain ASGI, bypassing FastAPI's "
        "routing and response classes (same answers, less latency)",
    )
    ws_impl: str = Field(
        "websockets-sansio", description="uvicorn WebSocket implementation (s2loop serve)"
    )
    log_level: str = Field("info", description="debug | info | warning | error")
    log_json: bool = Field(True, description="logs as one JSON object per line")
    access_log: bool = Field(False, description="uvicorn access log (costs latency)")

    @field_validator("fallback")
    @classmethod
    def _fallback_known(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in ("emulator", "none"):
            raise ValueError("fallback must be 'emulator' or 'none'")
        return v

    @field_validator("degraded_status")
    @classmethod
    def _degraded_status(cls, v: int) -> int:
        if v not in (200, 503):
            raise ValueError("degraded_status must be 200 or 503")
        return v

    @field_validator("reload_token", "api_keys")
    @classmethod
    def _usable_secret(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """An empty value is the same as unset (what ``${KEYS:-}`` gives); a value that
        holds something but no usable key (``","``: what ``"$A,$B"`` becomes when both
        are unset; spaces) is an error, never an open door."""
        if v is None or not v.get_secret_value():
            return None
        text = v.get_secret_value()
        parts = text.split(",") if info.field_name == "api_keys" else [text]
        if not any(p.strip() for p in parts):
            env = f"S2LOOP_{info.field_name.upper()}"
            raise ValueError(
                f"{env} holds no usable key (only commas or spaces); unset it, or give "
                + ("KEY[,KEY...]" if info.field_name == "api_keys" else "a token")
            )
        return v

    @field_validator("tcp_bind")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v:
            host, _, port = v.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError("tcp_bind must be HOST:PORT, e.g. 127.0.0.1:5555")
        return v or None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Settings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("S2LOOP_SSL_KEYFILE is set without S2LOOP_SSL_CERTFILE")
        return self

    @field_validator("shadow")
    @classmethod
    def _model_paths(cls, v: str | None) -> str | None:
        for part in (v or "").split(","):
            if part.strip() and "=" not in part:
                raise ValueError("shadow must be MODEL=PATH[,MODEL=PATH...]")
        return v or None

    def shadows(self) -> dict[str, Path]:
        """Live model name -> shadow artifact path."""
        pairs = (p.split("=", 1) for p in (self.shadow or "").split(",") if p.strip())
        return {name.strip(): Path(path.strip()) for name, path in pairs}

    def keys(self) -> list[bytes]:
        """The API keys (empty: the API is open)."""
        if self.api_keys is None:
            return []
        raw = self.api_keys.get_secret_value().split(",")
        return [k.strip().encode() for k in raw if k.strip()]

    def backend_spec(self, name: str | None = None) -> str:
        name = self.backend if name is None else name
        return BACKEND_ALIASES.get(name, name)

    def backend_kwargs(self, name: str | None = None) -> dict[str, object]:
        """Constructor settings for a backend: the board gets its address and tick."""
        name = self.backend if name is None else name
        if name == "spinnaker2":
            return {"eth_ip": self.board_eth_ip, "sys_tick_in_s": self.sys_tick_in_s}
        if name == "reference":
            return {"device": self.reference_device}
        return {}

    @property
    def has_fallback(self) -> bool:
        return self.fallback != "none" and self.backend != "emulator"

    @property
    def primary_timeout_s(self) -> float:
        if self.primary_timeout_ms is not None:
            return min(self.primary_timeout_ms, self.deadline_ms) / 1e3
        share = 0.8 if self.has_fallback else 1.0
        return self.deadline_ms * share / 1e3

    def uvicorn_options(self) -> dict[str, object]:
        """Keyword arguments for ``uvicorn.run`` (shared by ``s2loop serve`` and the
        bench's floor server, so both run under the same server settings)."""
        return {
            "host": self.host,
            "port": self.port,
            "log_config": None,
            "access_log": self.access_log,
            "ws_max_size": max(16 << 20, 2 * self.max_body_bytes),
            "timeout_graceful_shutdown": 5,
            "ws": self.ws_impl,
            "ssl_certfile": str(self.ssl_certfile) if self.ssl_certfile else None,
            "ssl_keyfile": str(self.ssl_keyfile) if self.ssl_keyfile else None,
            "backlog": self.backlog,
        }

    def check_usable(self) -> None:
        """ValueError naming the setting when a file or folder it names cannot be used:
        the TLS certificate and key, the record folder."""
        self.server_tls()
        if self.record_dir is not None:
            from service.recorder import check_folder

            check_folder(self.record_dir)

    def server_tls(self) -> ssl.SSLContext | None:
        """The server's TLS context from ``ssl_certfile``/``ssl_keyfile`` (None without a
        certificate); ValueError naming the setting when they cannot be loaded."""
        if self.ssl_certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"S2LOOP_SSL_CERTFILE {self.ssl_certfile} / S2LOOP_SSL_KEYFILE "
                f"{self.ssl_keyfile}: cannot load a certificate and key: {exc}"
            ) from None
        return context
