"""Pod IP allocation from a loopback range (127.x.y.z).

Linux routes all of 127.0.0.0/8 to the loopback interface, so every pod can get its own
address without network configuration. Addresses are handed out round-robin (so an
address just released is not reused at once) and never while in use. When ``lock_dir``
is given, each address in use is also claimed with an ``flock`` on a file there, so two
kubelets on the same machine (e.g. concurrent test runs) never hand out the same address;
the kernel drops the claims when the process dies.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from pathlib import Path


class PoolExhaustedError(RuntimeError):
    """Every address of the range is in use."""


class IPAllocator:
    """Allocates host addresses of ``network`` (never its network/broadcast, never .0/.255)."""

    def __init__(self, network: str, *, lock_dir: Path | None = None) -> None:
        self.network = ipaddress.IPv4Network(network)
        if not self.network.is_loopback:
            raise ValueError(f"{network} is not a loopback range")
        self._lock_dir = lock_dir
        if lock_dir is not None:
            lock_dir.mkdir(parents=True, exist_ok=True)
        self._in_use: dict[str, int | None] = {}  # ip -> lock fd
        self._next = 0
        self._size = self.network.num_addresses

    def in_use(self) -> frozenset[str]:
        """Addresses currently allocated by this allocator."""
        return frozenset(self._in_use)

    def _claim(self, ip: str) -> tuple[bool, int | None]:
        if self._lock_dir is None:
            return True, None
        fd = os.open(self._lock_dir / ip, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False, None
        return True, fd

    def allocate(self) -> str:
        """Return a free address. Raises PoolExhaustedError when none is left."""
        for _ in range(self._size):
            offset = self._next
            self._next = (self._next + 1) % self._size
            addr = self.network.network_address + offset
            last = int(addr) & 0xFF
            if addr in (self.network.network_address, self.network.broadcast_address):
                continue
            if last in (0, 255) or str(addr) == "127.0.0.1":
                continue
            ip = str(addr)
            if ip in self._in_use:
                continue
            ok, fd = self._claim(ip)
            if ok:
                self._in_use[ip] = fd
                return ip
        raise PoolExhaustedError(f"no free address left in {self.network}")

    def reserve(self, ip: str) -> bool:
        """Claim a specific address (e.g. one a pod already had); False if unavailable."""
        if ip in self._in_use or ipaddress.IPv4Address(ip) not in self.network:
            return False
        ok, fd = self._claim(ip)
        if ok:
            self._in_use[ip] = fd
        return ok

    def release(self, ip: str) -> None:
        """Give an address back (no-op when it is not allocated)."""
        if ip not in self._in_use:
            return
        fd = self._in_use.pop(ip)
        if fd is not None:
            os.close(fd)
