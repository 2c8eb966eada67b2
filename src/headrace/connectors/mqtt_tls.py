"""MQTT over TLS, without paho: the settings, the :class:`ssl.SSLContext` they make, and
the words for a failed certificate check.

Apart from the MQTT connector (:mod:`headrace.connectors.mqtt`) because loading a
pipeline file checks the files (that they exist, that they are PEM, that the key fits the
certificate), and checking a pipeline file must not need the ``mqtt`` extra.

Every problem is a :class:`TlsSettingsError` whose message starts with the key at fault
(``ca_file: ...``), so the configuration can name it as ``source.tls.ca_file``.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

from headrace.errors import HeadraceError

log = logging.getLogger("headrace.mqtt")

# The port MQTT over TLS listens on by default (IANA's "secure-mqtt"), and plain MQTT's.
TLS_PORT = 8883
PLAIN_PORT = 1883


class TlsSettingsError(HeadraceError, ValueError):
    """A TLS file that is missing, unreadable or not what its key says; the message
    starts with the key (``cert_file: ...``)."""


@dataclass(frozen=True)
class MqttTls:
    """TLS for an MQTT connection. ``ca_file``: the CA certificates (PEM) that may sign the
    broker's certificate, instead of the system's trusted CAs. ``cert_file`` and
    ``key_file``: a client certificate (PEM) and its unencrypted private key, for brokers
    that authenticate clients by certificate (AWS IoT Core, Azure IoT Hub with X.509).
    ``insecure_skip_verify`` checks neither the broker's certificate nor its name: the
    connection is encrypted, but anyone in the path can pose as the broker."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    def problem(self) -> str | None:
        """What is wrong with these settings, before any file is read, or ``None``."""
        if self.cert_file is not None and self.key_file is None:
            return (
                "key_file: cert_file needs key_file, the client certificate's private key "
                "(PEM, unencrypted)"
            )
        if self.key_file is not None and self.cert_file is None:
            return "cert_file: key_file needs cert_file, the client certificate it belongs to"
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not os.path.isfile(path):
                what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
                return f"{key}: {path} {what}"
        return None


def tls_context(tls: MqttTls) -> ssl.SSLContext:
    """The context the connection uses: the system's trusted CAs or ``ca_file``, hostname
    checks on, TLS 1.2 at least, and the client certificate if one is set. Raises
    :class:`TlsSettingsError` naming the key of a file that cannot be used."""
    problem = tls.problem()
    if problem is not None:
        raise TlsSettingsError(problem)
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSettingsError(
            f"ca_file: {tls.ca_file} holds no usable CA certificate (PEM expected): {_reason(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        _load_client_certificate(context, tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Encrypted(Exception):
    pass


def _no_password() -> str:
    # Without a callback, OpenSSL would prompt on the terminal for the key's password.
    raise _Encrypted


def _load_client_certificate(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _Encrypted:
        raise TlsSettingsError(
            f"key_file: {key_file} is encrypted; give the key unencrypted (e.g. "
            "`openssl pkey -in KEY -out KEY.plain`) and protect the file instead"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        reason = _reason(exc)
        if "KEY_VALUES_MISMATCH" in reason or "key values mismatch" in reason:
            raise TlsSettingsError(
                f"key_file: {key_file} is not the private key of cert_file {cert_file}"
            ) from None
        # OpenSSL reads the certificate first: a PEM error names the file only by order.
        bad = "key_file" if _is_certificate(cert_file) else "cert_file"
        path = key_file if bad == "key_file" else cert_file
        what = "private key" if bad == "key_file" else "certificate"
        detail = "" if "PEM lib" in reason else f": {reason}"
        raise TlsSettingsError(
            f"{bad}: {path} holds no usable {what} (PEM expected){detail}"
        ) from None


def _is_certificate(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"-----BEGIN CERTIFICATE-----" in f.read(1 << 20)
    except OSError:
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


_warned: set[tuple[str, int]] = set()


def warn_insecure(name: str, host: str, port: int) -> None:
    """Log, once per process and broker, that the broker's certificate is not checked."""
    if (host, port) in _warned:
        return
    _warned.add((host, port))
    log.warning(
        "mqtt source %s: tls.insecure_skip_verify is on: the certificate of %s:%s is not "
        "checked, so anyone in the path can pose as the broker; set tls.ca_file instead",
        name,
        host,
        port,
    )


def verification_failure(
    exc: ssl.SSLCertVerificationError, *, host: str, port: int, ca_file: str | None
) -> str:
    """One line for a broker certificate that failed the check: what is wrong, which key
    to look at, what to do."""
    message = str(exc.verify_message or exc.reason or exc)
    lowered = message.lower()
    at = f"mqtt {host}:{port}: TLS"
    trusted = f"source.tls.ca_file ({ca_file})" if ca_file else "the system's trusted CAs"
    if "expired" in lowered:
        return (
            f"{at}: the broker's certificate has expired; renew it on the broker (or, if it "
            "is still valid, check this machine's clock)"
        )
    if "not yet valid" in lowered:
        return (
            f"{at}: the broker's certificate is not valid yet; check this machine's clock "
            "and the broker's"
        )
    if "mismatch" in lowered:
        return (
            f"{at}: the broker's certificate is not issued for {host!r} (source.host); "
            "connect by a name the certificate lists, or have the broker's certificate "
            "issued for this one"
        )
    if "issuer" in lowered or "self-signed" in lowered or "self signed" in lowered:
        return (
            f"{at}: the broker's certificate is not signed by a CA in {trusted} "
            f"({message}); set source.tls.ca_file to the CA certificate that signed it"
        )
    if "revoked" in lowered:
        return f"{at}: the broker's certificate is revoked; the broker needs a new one"
    return f"{at}: the broker's certificate failed verification ({message}); check {trusted}"
