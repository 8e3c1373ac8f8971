"""kernelsession client: drive JupyterLab sessions from code."""
