"""The state directory: per joined network its config (TOML) and its three keys.

Layout (all files 0600, written atomically: temp file, fsync, rename)::

    STATE_DIR/networks/NAME/config.toml   NetworkConfig
    STATE_DIR/networks/NAME/wireguard.key WireGuard private key (base64)
    STATE_DIR/networks/NAME/probe.key     X25519 probe key (base64)
    STATE_DIR/networks/NAME/node.key      Ed25519 signing key seed (base64)
    STATE_DIR/networks/NAME/*.key.next    a rotation's new WireGuard / probe key, kept
                                          until the server switches the node to it

A config that does not decode refuses to start and names the file and field; a field
this version no longer has (:data:`RETIRED_FIELDS`) is dropped, so old files still load.
"""

from __future__ import annotations

import base64
import os
import shutil
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec
import tomli_w
from msgspec import Meta
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from punchd.errors import ConfigError
from punchd.wire.api import IfName, Name

# Written by older versions, read by none: ``last_seq`` was never used to resume the
# event stream (that would need the peer model persisted too; a restart takes a fresh
# snapshot instead).
RETIRED_FIELDS = ("last_seq",)


class NetworkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    server: str
    interface: IfName
    node_id: str
    node_name: str
    listen_port: Annotated[int, Meta(ge=1, le=65535)]


class NetworkKeys(msgspec.Struct, frozen=True):
    wireguard: str  # base64 private key
    probe: PrivateKey
    signing: SigningKey


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by root only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.networks_dir = root / "networks"

    def ensure(self) -> None:
        try:
            self.networks_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise ConfigError(f"state directory {self.root}: {exc.strerror or exc}") from exc

    def network_dir(self, name: str) -> Path:
        """The directory of network ``name``; refuses anything but a direct child of
        ``networks/`` (punchd runs as root and rmtree()s this path on a failed join)."""
        try:
            msgspec.convert(name, type=Name)
        except msgspec.ValidationError:
            raise ConfigError(f"not a valid network name: {name[:80]!r}") from None
        path = self.networks_dir / name
        # Belt and braces: even a valid name must not escape through a symlink.
        if path.resolve().parent != self.networks_dir.resolve():
            raise ConfigError(f"network directory {path} is not inside {self.networks_dir}")
        return path

    def list_networks(self) -> list[str]:
        if not self.networks_dir.is_dir():
            return []
        return sorted(p.name for p in self.networks_dir.iterdir()
                      if (p / "config.toml").is_file() and not p.name.startswith("."))

    def load_config(self, name: str) -> NetworkConfig:
        path = self.network_dir(name) / "config.toml"
        try:
            raw = tomllib.loads(path.read_text())
            for retired in RETIRED_FIELDS:
                raw.pop(retired, None)
            config = msgspec.convert(raw, type=NetworkConfig)
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        if config.name != name:
            raise ConfigError(f"{path}: name {config.name!r} is not its directory's {name!r}")
        return config

    def save_config(self, config: NetworkConfig) -> None:
        directory = self.network_dir(config.name)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        write_private(directory / "config.toml",
                      tomli_w.dumps(msgspec.to_builtins(config)).encode())

    def create_keys(self, name: str) -> NetworkKeys:
        directory = self.network_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        keys = NetworkKeys(
            wireguard=base64.b64encode(bytes(PrivateKey.generate())).decode(),
            probe=PrivateKey.generate(),
            signing=SigningKey.generate(),
        )
        write_private(directory / "wireguard.key", keys.wireguard.encode() + b"\n")
        write_private(directory / "probe.key", base64.b64encode(bytes(keys.probe)) + b"\n")
        write_private(directory / "node.key", base64.b64encode(bytes(keys.signing)) + b"\n")
        return keys

    def load_keys(self, name: str) -> NetworkKeys:
        directory = self.network_dir(name)
        try:
            wg = (directory / "wireguard.key").read_text().strip()
            probe = base64.b64decode((directory / "probe.key").read_text().strip(), validate=True)
            seed = base64.b64decode((directory / "node.key").read_text().strip(), validate=True)
            return NetworkKeys(wireguard=wg, probe=PrivateKey(probe), signing=SigningKey(seed))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{directory}: keys unreadable: {exc}") from exc

    def create_next_keys(self, name: str) -> tuple[str, PrivateKey]:
        """New WireGuard and probe keys for a rotation, kept beside the current ones:
        the node uses them only once the server says its peers have them."""
        directory = self.network_dir(name)
        wg = base64.b64encode(bytes(PrivateKey.generate())).decode()
        probe = PrivateKey.generate()
        write_private(directory / "wireguard.key.next", wg.encode() + b"\n")
        write_private(directory / "probe.key.next", base64.b64encode(bytes(probe)) + b"\n")
        return wg, probe

    def promote_next_key(self, name: str, which: str) -> None:
        """``wireguard`` or ``probe``: the next key becomes the key. One rename each, so
        a crash between the two leaves each file whole; a restart compares each with
        the server's word and promotes what is left."""
        if which not in ("wireguard", "probe"):
            raise ConfigError(f"no such key: {which!r}")
        directory = self.network_dir(name)
        try:
            os.replace(directory / f"{which}.key.next", directory / f"{which}.key")
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise ConfigError(f"{directory}: cannot switch the {which} key: {exc}") from exc

    def remove(self, name: str) -> None:
        shutil.rmtree(self.network_dir(name), ignore_errors=True)
