"""Hollow capacity for the scale bench: KWOK fake nodes and one process serving the
Jupyter REST API of every lab on them (figures from it are labelled hollow)."""

from kernelsession.localcluster.hollow.lab import HollowLab, LabEntry, entry_from_pod
from kernelsession.localcluster.hollow.netns import HollowNetwork

__all__ = ["HollowLab", "HollowNetwork", "LabEntry", "entry_from_pod"]
