"""kernelsession client: drive JupyterLab sessions from code.

>>> async with JupyterLabSessionManager(
...     base_url="http://lab:8888/user/alice/", token=token, username="alice"
... ) as session:
...     print(await session.run_python("print(6 * 7)"))
42
"""

from . import resources
from ._errors import (
    JupyterError,
    JupyterExecutionError,
    JupyterExecutionTimeoutError,
    JupyterKernelDiedError,
    JupyterNotFoundError,
    JupyterOutputLostError,
    JupyterTimeoutError,
    JupyterUnsupportedError,
    JupyterWebError,
    JupyterWebSocketError,
)
from ._kubernetes import (
    KernelSessionApiError,
    KernelSessionClient,
    KernelSessionError,
    KernelSessionFailedError,
    KernelSessionNotFoundError,
    KernelSessionTimeoutError,
)
from ._manager import JupyterLabSessionManager
from ._models import (
    CellResult,
    CodeContext,
    ExecutionResult,
    NotebookResult,
    OutputChunk,
    SessionTimings,
)
from ._session import JupyterLabSession
from .resources import (
    API_VERSION,
    DEFAULT_NAMESPACE,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    KernelSessionStatus,
    Phase,
    parse_status,
    read_token,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_NAMESPACE",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "CellResult",
    "CodeContext",
    "ExecutionResult",
    "JupyterError",
    "JupyterExecutionError",
    "JupyterExecutionTimeoutError",
    "JupyterKernelDiedError",
    "JupyterLabSession",
    "JupyterLabSessionManager",
    "JupyterNotFoundError",
    "JupyterOutputLostError",
    "JupyterTimeoutError",
    "JupyterUnsupportedError",
    "JupyterWebError",
    "JupyterWebSocketError",
    "KernelSessionApiError",
    "KernelSessionClient",
    "KernelSessionError",
    "KernelSessionFailedError",
    "KernelSessionNotFoundError",
    "KernelSessionStatus",
    "KernelSessionTimeoutError",
    "NotebookResult",
    "OutputChunk",
    "Phase",
    "SessionTimings",
    "parse_status",
    "read_token",
    "resources",
]
