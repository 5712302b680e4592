"""ipkernel's security: certificates and fingerprints, key files, role secrets.

The model (SPEC §2): the controller owns a self-signed certificate. Each key file is one
line, a capability URL::

    pb+tls://<fingerprint>@<host>:<port>/<secret>

where ``fingerprint`` is the SHA-256 of the certificate's DER encoding (64 lowercase hex
digits) and ``secret`` is a random URL-safe token of 256 bits, one per role (engine,
MultiEngine, Task). A client or engine accepts the controller only if the certificate it
presents has that fingerprint: no certificate authority, no host-name check, so one key
file works whatever address the controller is reached by (the pinning itself is in
:mod:`ipkernel.wire.tls`). After the handshake the client sends the secret, which the
controller compares in constant time (:func:`check_secret`).

Modules:

- :mod:`~ipkernel.security.certificates`: :class:`ControllerIdentity` (the certificate and
  private key), :func:`fingerprint_of`;
- :mod:`~ipkernel.security.keyfiles`: :class:`KeyFile`, :func:`read_key_file`,
  :func:`write_key_file`, the key file format;
- :mod:`~ipkernel.security.role_secrets`: :func:`new_secret`, :func:`check_secret`;
- :mod:`~ipkernel.security.roles`: the roles' names, asked for at login, and what
  each grants;
- :mod:`~ipkernel.security.controller_keys`: :class:`ControllerKeys`,
  :func:`previous_ports`, everything the controller writes to its security directory,
  kept across restarts with ``--reuse-keys``;
- :mod:`~ipkernel.security.private_files`: how all of them are written;
- :mod:`~ipkernel.security.peer_identity`: ``PeerIdentity``, the throwaway
  certificates of direct links between clients and engines (never written anywhere).

Every file written here is mode 0600 in a directory of mode 0700.
"""

from ipkernel.security.certificates import CERT_NAME, ControllerIdentity, fingerprint_of
from ipkernel.security.controller_keys import ControllerKeys, previous_ports
from ipkernel.security.keyfiles import SCHEME, KeyFile, read_key_file, write_key_file
from ipkernel.security.role_secrets import check_secret, new_secret

__all__ = [
    "CERT_NAME",
    "SCHEME",
    "ControllerIdentity",
    "ControllerKeys",
    "KeyFile",
    "check_secret",
    "fingerprint_of",
    "new_secret",
    "previous_ports",
    "read_key_file",
    "write_key_file",
]
