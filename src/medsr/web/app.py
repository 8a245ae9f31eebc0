"""The local web apps of `medsr view` and `medsr study serve` (Starlette, served by uvicorn).

Safe by default: bound to 127.0.0.1, and every request must carry a random token (in the URL the
command prints, then in a cookie), as Jupyter does: other users of a shared machine reach the
loopback too. ``--no-token`` serves without one, on the loopback only. Files are addressed by
their number in what was opened, never by a path from the page, so nothing outside the opened
folders can be read.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import webbrowser
from importlib.resources import files as package_files
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from medsr.core.image import ImageError
from medsr.web import study, view

log = logging.getLogger(__name__)
TOKEN_COOKIE = "medsr_token"


def _page(name: str) -> str:
    return (package_files("medsr.web") / "pages" / name).read_text(encoding="utf-8")


class _Token(BaseHTTPMiddleware):
    """Every request must carry the token: ``?token=`` (the printed URL) or the cookie it sets."""

    def __init__(self, app, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return Response("a token is needed: open the URL that medsr printed", status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        return response


def _errors(handler):
    """Problems with what was asked become 400/404 answers with the reason, never a traceback."""
    async def wrapped(request: Request):
        try:
            return await handler(request)
        except (IndexError, KeyError, FileNotFoundError) as exc:
            return JSONResponse({"error": str(exc) or "not found"}, status_code=404)
        except BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except PermissionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        except RecursionError:
            return JSONResponse({"error": "nested too deeply"}, status_code=400)
        except (ValueError, ImageError, OverflowError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
    return wrapped


MAX_BODY = 64 * 1024  # an answer is a few hundred bytes


class BodyTooLarge(ValueError):
    pass


async def _bounded_body(request: Request) -> bytes:
    """The request's body, refused by its declared length and while it streams past ``MAX_BODY``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge(f"a body of {int(declared):,} bytes; at most {MAX_BODY:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BodyTooLarge(f"a body of more than {MAX_BODY:,} bytes")
    return bytes(body)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def _number(request: Request, name: str, default: float | None = None) -> float:
    text = request.query_params.get(name)
    if text is None or text == "":
        if default is None:
            raise ValueError(f"{name} is needed")
        return default
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"{name}={text}: not a finite number")
    return value


# ---------------------------------------------------------------------------------------------
# medsr view


def viewer_app(collection: view.Collection, *, token: str | None = None, device: str = "cpu",
               host: str = "127.0.0.1") -> Starlette:
    async def page(request: Request):
        return HTMLResponse(_page("view.html"))

    async def items(request: Request):
        return JSONResponse({"layers": [layer.name for layer in collection.layers],
                             "items": [{"name": item.name, "present": [f is not None for f in item.files]}
                                       for item in collection.items]})

    def image_of(request: Request):
        return view.load(collection.file(request.path_params["item"], request.path_params["layer"]))

    async def info(request: Request):
        return JSONResponse(view.describe(image_of(request)))

    async def image(request: Request):
        shown = image_of(request)
        given = "low" in request.query_params and "high" in request.query_params
        window = (_number(request, "low"), _number(request, "high")) if given else None
        return _png(view.render(shown, window))

    async def detail_map(request: Request):
        source = view.load(collection.file(request.path_params["item"], int(_number(request, "source", 0))))
        return _png(view.overlay(image_of(request), source, request.path_params["kind"]))

    async def dial(request: Request):
        x, y, w, h = (int(_number(request, key)) for key in ("x", "y", "w", "h"))
        region = (x, y, w, h)
        if max(abs(v) for v in region) > 1 << 20:
            raise ValueError("region out of range")
        return _png(view.dial(image_of(request), _number(request, "f"), region, device=device))

    routes = [Route("/", page), Route("/api/items", _errors(items)),
              Route("/api/info/{item:int}/{layer:int}", _errors(info)),
              Route("/api/image/{item:int}/{layer:int}", _errors(image)),
              Route("/api/map/{item:int}/{layer:int}/{kind:str}", _errors(detail_map)),
              Route("/api/dial/{item:int}/{layer:int}", _errors(dial))]
    return Starlette(routes=routes, middleware=_middleware(token, host))


def _middleware(token: str | None, host: str = "127.0.0.1") -> list[Middleware]:
    """With a token: the token. Without (the loopback, asked for): only this machine's own host names
    and the address served on, so that a page of another site cannot reach the server through a name
    that resolves to the loopback (DNS rebinding)."""
    if token:
        return [Middleware(_Token, token=token)]
    names = ["127.0.0.1", "localhost", "[::1]", "::1", host, f"[{host}]"]
    return [Middleware(TrustedHostMiddleware, allowed_hosts=list(dict.fromkeys(names)))]


# ---------------------------------------------------------------------------------------------
# medsr study serve


def study_app(path: Path, *, token: str | None = None, host: str = "127.0.0.1") -> Starlette:
    study.settings(path)  # a missing or foreign file is refused before serving

    async def page(request: Request):
        return HTMLResponse(_page("study.html"))

    async def next_question(request: Request):
        reader = request.query_params.get("reader", "")
        found, done, total = study.next_question(path, reader)
        config = study.settings(path)
        body = {"done": done, "total": total, "question": config["question"],
                "reference": bool(config["reference"])}
        if found is not None:
            body.update(id=found.id, number=found.number)
        return JSONResponse(body)

    async def crop(request: Request):
        pixels = study.crop(path, request.path_params["question"], request.path_params["side"])
        return _png(view.png(pixels))

    async def answer(request: Request):
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            # a page of another site can only send forms and plain text without asking first
            return JSONResponse({"error": "send the answer as application/json"}, status_code=415)
        body = json.loads(await _bounded_body(request))
        if not isinstance(body, dict):
            raise ValueError("send a JSON object")
        if not isinstance(body.get("reader", ""), str) or not isinstance(body.get("choice", ""), str):
            raise ValueError("reader and choice must be text")
        artefacts = body.get("artefacts") or {}
        seconds = body.get("seconds")
        study.answer(path, reader=str(body.get("reader", "")), question_id=body.get("question"),
                     choice=str(body.get("choice", "")), artefacts=artefacts if isinstance(artefacts, dict) else {},
                     seconds=float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool)
                     else None)
        return JSONResponse({"saved": True})

    routes = [Route("/", page), Route("/api/next", _errors(next_question)),
              Route("/api/crop/{question:int}/{side:str}", _errors(crop)),
              Route("/api/answer", _errors(answer), methods=["POST"])]
    return Starlette(routes=routes, middleware=_middleware(token, host))


# ---------------------------------------------------------------------------------------------
# serving


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_for(host: str, *, no_token: bool = False) -> str | None:
    """A random token, which every request must carry: other users of a shared machine (a hospital
    workstation, a cluster's login node) reach the loopback too, as Jupyter knows. ``no_token`` serves
    without one, on the loopback only."""
    if no_token:
        if not is_loopback(host):
            raise ValueError(f"host {host}: serving without a token is for the loopback (127.0.0.1) only")
        return None
    return secrets.token_urlsafe(24)


def serve(app: Starlette, *, host: str, port: int, token: str | None, open_browser: bool,
          announce=log.info) -> None:
    """Serve ``app`` until interrupted; ``announce`` hears the URL (with the token where there is one)."""
    import uvicorn

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    announce(f"serving on {url} (Ctrl+C stops)")
    if open_browser:
        webbrowser.open(url)
    uvicorn.run(app, host=host, port=port, log_level="warning")
