"""Building what the local cluster runs: the pinned binaries (found or built from the Go
module proxy), the container images (OCI archives, built locally) and ``make
binaries``/``make images`` side by side (:mod:`.prepare`)."""
