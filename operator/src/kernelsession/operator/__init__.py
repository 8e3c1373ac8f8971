"""kernelsession operator: KernelSession resources to JupyterLab pods."""
