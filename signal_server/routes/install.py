"""Anyone: ``install.sh`` and the wheelhouse it installs from (``/dist/``).

Outside ``/api/v1``: these are the URLs an operator pastes (``curl -fsSL
SERVER/install.sh | sudo sh -s -- --token T``) and pip reads (``--find-links
SERVER/dist/``). No secret is in either: the join token is the script's argument.
A wheel name from the path is hostile: :meth:`Wheelhouse.path` admits only a strict
wheel name listed in the directory, so no path ever leaves it.
"""

from __future__ import annotations

import shlex
from importlib import resources

from starlette.responses import FileResponse, Response

from punchd import __version__
from punchd.errors import DistUnavailable, NotFound

from ..dist import Wheelhouse, index_html
from .common import Call, Operation

INSTALL_SH = "/install.sh"
DIST = "/dist/"
WHEEL = "/dist/{wheel}"


def install_script(server_url: str) -> str:
    """install.sh with this server's URL and version filled in, shell-quoted."""
    text = resources.files("signal_server").joinpath("install.sh").read_text()
    return (text.replace("SERVER=@SERVER@", f"SERVER={shlex.quote(server_url.rstrip('/'))}")
            .replace("VERSION=@VERSION@", f"VERSION={shlex.quote(__version__)}"))


async def get_install_sh(call: Call) -> Response:
    return Response(install_script(call.service.public_url), media_type="text/x-shellscript")


def _wheelhouse(call: Call) -> Wheelhouse:
    if call.ctx.dist is None:
        raise DistUnavailable("this server has no wheelhouse (signal-server serve makes one; "
                              "give --dist DIR for another)")
    return call.ctx.dist


async def get_index(call: Call) -> Response:
    names = await _wheelhouse(call).names()
    return Response(index_html(names), media_type="text/html")


async def get_wheel(call: Call) -> Response:
    name = call.request.path_params["wheel"]
    path = await _wheelhouse(call).path(name)
    if path is None:
        raise NotFound(f"no wheel {name!r} here (GET /dist/ lists them)", "wheel")
    return FileResponse(path, media_type="application/octet-stream", filename=name)


OPERATIONS = [
    Operation("GET", INSTALL_SH, "the install script: curl -fsSL SERVER/install.sh | sudo sh "
              "-s -- --token TOKEN", "none", get_install_sh, response=str,
              media="text/x-shellscript"),
    Operation("GET", DIST, "the wheelhouse index (pip --find-links)", "none", get_index,
              response=str, media="text/html", unavailable=True),
    Operation("GET", WHEEL, "one wheel of the wheelhouse", "none", get_wheel, response=bytes,
              media="application/octet-stream", unavailable=True),
]
