"""Debian packages the local node's tooling needs, installed with apt-get when missing.

``python -m kernelsession.localcluster.host.ospackages install [GROUP...]`` (``make os-packages``,
which ``make setup`` runs): checks each package with ``dpkg-query`` and, only when some are
missing, runs ``apt-get update`` and ``apt-get install -y --no-install-recommends ...``.
Needs root on Debian; elsewhere it prints one message saying what to install and exits 1
(``check`` exits 1 when something is missing, without installing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence

#: Package groups. ``images``: what ``make images`` needs (see ``images.py``).
GROUPS: dict[str, tuple[str, ...]] = {
    "node": (
        "runc",  # the OCI runtime containerd's shim runs (crun refuses cgroup v1 hybrid)
        "containernetworking-plugins",  # CNI bridge, host-local, loopback, portmap
        "iptables",  # kube-proxy, the kubelet, the NetworkPolicy enforcer, the node guard
        "conntrack",  # kube-proxy clears stale UDP entries
        "nftables",  # teardown removes the nftables tables iptables-nft created
        "iproute2",  # the node bridge and routes
    ),
    "browser": (
        "chromium",  # `kernelsession open` tested in a real headless browser
        "chromium-driver",
    ),
    "images": (
        "buildah",  # lab and operator images from their Dockerfiles (chroot isolation, vfs)
        "mmdebstrap",  # the Debian base image
        "uidmap",  # mmdebstrap --mode=unshare
        "debian-archive-keyring",  # verifies the mirror for mmdebstrap
        "gcc",  # the static pause binary
        "libc6-dev",  # ... its static libc
        "ca-certificates",
    ),
    "monitoring": (
        # promtool: `make test` unit-tests the alerts in manifests/monitoring/ with
        # `promtool test rules`. The package also ships a Prometheus server unit: on a host
        # with systemd, apt starts it unless a policy-rc.d forbids it.
        "prometheus",
    ),
}


class OsPackagesError(RuntimeError):
    """Packages are missing and cannot be installed here (not root, not Debian, apt failed)."""


def missing(packages: Iterable[str]) -> list[str]:
    """The packages that dpkg does not report as installed."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    absent = []
    for pkg in packages:
        result = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${db:Status-Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or result.stdout.strip() != "installed":
            absent.append(pkg)
    return absent


def packages_of(groups: Sequence[str]) -> list[str]:
    """The packages of the named groups (all groups when none is named), without repeats."""
    names = list(groups) or list(GROUPS)
    out: list[str] = []
    for group in names:
        if group not in GROUPS:
            raise ValueError(f"unknown package group {group!r}; known: {', '.join(GROUPS)}")
        out.extend(p for p in GROUPS[group] if p not in out)
    return out


def ensure(packages: Sequence[str], *, log: bool = True) -> list[str]:
    """Install the missing ones of ``packages``; return what was installed.

    Raises:
        OsPackagesError: some are missing and this is not a Debian machine where we are
            root, or apt-get failed.
    """
    absent = missing(packages)
    if not absent:
        return []
    command = f"apt-get install -y --no-install-recommends {' '.join(absent)}"
    if shutil.which("apt-get") is None or not os.path.exists("/etc/debian_version"):
        raise OsPackagesError(
            f"missing OS packages: {' '.join(absent)}. This is not a Debian machine: install "
            f"their equivalents with your package manager (on Debian: `{command}`)."
        )
    if os.geteuid() != 0:
        raise OsPackagesError(
            f"missing OS packages: {' '.join(absent)}. Run as root (e.g. `sudo make setup`) "
            f"or install them yourself: `sudo apt-get update && sudo {command}`."
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = sys.stderr if log else subprocess.DEVNULL
    if log:
        print(f"kernelsession: installing OS packages: {' '.join(absent)}", file=sys.stderr)
    # Try without a fresh index first (fast when the lists are current), then update.
    for update in (False, True):
        if update:
            subprocess.run(["apt-get", "update"], env=env, stdout=out, stderr=out, check=False)
        result = subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", *absent],
            env=env,
            stdout=out,
            stderr=out,
            check=False,
        )
        if result.returncode == 0:
            break
    still = missing(absent)
    if still:
        raise OsPackagesError(f"`{command}` did not install: {' '.join(still)}")
    return absent


def main(argv: list[str] | None = None) -> int:
    """CLI: ``install [GROUP...]`` or ``check [GROUP...]``; ``list`` prints the groups."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.host.ospackages")
    parser.add_argument("command", choices=["install", "check", "list"])
    parser.add_argument("groups", nargs="*", help=f"package groups ({', '.join(GROUPS)})")
    args = parser.parse_args(argv)
    if args.command == "list":
        for group, pkgs in GROUPS.items():
            print(f"{group}: {' '.join(pkgs)}")
        return 0
    try:
        packages = packages_of(args.groups)
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "check":
        absent = missing(packages)
        if absent:
            print(f"missing OS packages: {' '.join(absent)}", file=sys.stderr)
            return 1
        return 0
    try:
        installed = ensure(packages)
    except OsPackagesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"OS packages: {len(packages)} present"
        + (f", installed {len(installed)}" if installed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
