"""Publish a converted artifact to the Hub: check it, render its card, upload everything in one commit.

Order of events, so that a broken or half-published repo cannot happen:
1. the artifact is reloaded and checked and the card rendered and re-parsed, all offline;
2. the token is found the huggingface_hub way (argument, HF_TOKEN, or `hf auth login`) and checked (whoami);
3. the repo is looked up, created if missing (private on request), refused if it is someone else's
   or holds a model quantkit did not publish;
4. one commit carries every file plus README.md and removes files of an earlier push that are gone now.
   Large files go through LFS first; they become visible only with the commit.

Transient failures (5xx, 408/429, dropped connections, timeouts) are retried with exponential back-off, each
step on its own. huggingface_hub already retries its own LFS and preupload requests; on top of that a failed
commit step is redone whole, and LFS objects the Hub already holds are not sent again, so re-running an
interrupted push resumes it. The token never appears in a message or a log line.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from quantkit import __version__
from quantkit.errors import HubError
from quantkit.hub.artifact import README, Artifact, check_artifact
from quantkit.hub.card import render_card
from quantkit.manifest import MANIFEST

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds to wait before each retry of a step; len(RETRY_WAITS) + 1 attempts in all.
RETRY_WAITS: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
KEPT_REMOTE_FILES = frozenset({".gitattributes"})
UPLOADING = re.compile(r"uploading '([^']+)'")  # huggingface_hub's RuntimeError around a failed LFS upload


@dataclass(frozen=True)
class Published:
    """Where the artifact went."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    files: tuple[str, ...]  # paths in the repo, README.md included


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection-level errors of whichever HTTP library huggingface_hub uses (httpx2, httpx or requests)."""
    found: list[type[BaseException]] = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), type)]
    return tuple(found)


def _chain(error: BaseException, limit: int = 16) -> list[BaseException]:
    """``error`` and the exceptions it was raised from (cause, else context), nearest first."""
    out: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(out) < limit and seen not in out:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


class _Step:
    """Runs one step against the Hub with retries, and turns what goes wrong into a one-line HubError."""

    def __init__(self, repo_id: str, token: str):
        from huggingface_hub.errors import HfHubHTTPError

        self.repo_id = repo_id
        self._token = token
        self._http_error = HfHubHTTPError
        self._transport = _transport_errors()

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _root(self, error: BaseException) -> BaseException:
        """The HTTP or transport error behind ``error`` (huggingface_hub wraps LFS failures in RuntimeError)."""
        for seen in _chain(error):
            if isinstance(seen, (self._http_error, *self._transport)):
                return seen
        return error

    def _status(self, error: BaseException) -> int | None:
        response = getattr(error, "response", None)
        return getattr(response, "status_code", None) if isinstance(error, self._http_error) else None

    def transient(self, error: BaseException) -> bool:
        root = self._root(error)
        return isinstance(root, self._transport) or self._status(root) in TRANSIENT_STATUS

    def status(self, error: BaseException) -> int | None:
        return self._status(self._root(error))

    def run(self, what: str, fn: Callable[[], T], *, handle: Callable[[BaseException], T | None] | None = None) -> T:
        """``fn()``, retried after RETRY_WAITS on transient failures; ``handle`` may turn an error into a result."""
        errors = (self._http_error, RuntimeError, ValueError, *self._transport)
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except errors as e:
                if handle is not None and (outcome := handle(e)) is not None:
                    return outcome
                if not self.transient(e) or attempt > len(RETRY_WAITS):
                    raise self.error(what, e, attempts=attempt) from e
                wait = RETRY_WAITS[attempt - 1]
                log.warning("%s: %s failed (%s); retry %d/%d in %.1fs", self.repo_id, what, self._describe(e),
                            attempt, len(RETRY_WAITS), wait)
                time.sleep(wait)

    @staticmethod
    def _file(error: BaseException) -> str | None:
        """The file huggingface_hub was uploading when ``error`` happened, if it says."""
        for seen in _chain(error):
            found = UPLOADING.search(str(seen)) if isinstance(seen, RuntimeError) else None
            if found:
                return found.group(1)
        return None

    def _describe(self, error: BaseException) -> str:
        root = self._root(error)
        status = self._status(root)
        if status is not None:
            server = " ".join(str(getattr(root, "server_message", None) or "").split())[:160]
            text = f"HTTP {status}" + (f": {server}" if server else "")
        elif isinstance(root, self._transport):
            text = f"{type(root).__name__}: {' '.join(str(root).split())[:160]}"
        else:
            text = " ".join(str(root).split())[:200] or type(root).__name__
        file = self._file(error)
        return self._scrub(f"{file}: {text}" if file else text)

    def error(self, what: str, error: BaseException, *, attempts: int) -> HubError:
        r, status = self.repo_id, self.status(error)
        if status == 401:
            msg = (f"{r}: the Hub rejected the token (401) while trying to {what}; set HF_TOKEN or run "
                   "`hf auth login` with a valid token that has write access")
        elif status == 403:
            msg = (f"{r}: not allowed to {what} (403 Forbidden); the namespace belongs to someone else or the token "
                   "is read-only; push under your own namespace or use a token with write access")
        elif status == 404:
            msg = f"{r}: not found or not visible to this token while trying to {what}; check the repo id and the token"
        elif status == 409:
            msg = f"{r}: the name is taken (409 Conflict) while trying to {what}; choose another repo id"
        elif self.transient(error):
            msg = (f"{r}: could not {what} after {attempts} attempts ({self._describe(error)}); nothing new was "
                   "published; run the same command again to resume (files already uploaded are not sent again)")
        else:
            msg = f"{r}: could not {what} ({self._describe(error)}); nothing new was published"
        return HubError(self._scrub(msg))


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import constants, get_token

    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    if offline:
        raise HubError("HF_HUB_OFFLINE is set: publishing needs the network; unset it and push again")
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (with write access), then push again")
    return token


def _full_repo_id(repo_id: str, user: str) -> str:
    parts = repo_id.split("/")
    if len(parts) == 1 and parts[0]:
        return f"{user}/{repo_id}"
    if len(parts) == 2 and all(parts):
        return repo_id
    raise HubError(f"{repo_id}: not a repo id; use NAME or NAMESPACE/NAME")


def _check_owner(repo_id: str, who: dict) -> None:
    user = who.get("name")
    orgs = [o.get("name") for o in who.get("orgs") or [] if isinstance(o, dict)]
    namespace = repo_id.split("/")[0]
    if namespace not in (user, *orgs):
        raise HubError(
            f"{repo_id}: the namespace {namespace!r} is not yours (the token belongs to {user!r}"
            f"{', member of ' + ', '.join(repr(o) for o in orgs) if orgs else ''}); push to {user}/{repo_id.split('/')[1]}"
        )
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubError(f"{repo_id}: the token is read-only; create one with write access and run `hf auth login` again")


def _check_existing(repo_id: str, info, *, private: bool) -> None:
    names = {s.rfilename for s in info.siblings or []}
    foreign = sorted(names - {".gitattributes", README})
    if foreign and MANIFEST not in names:
        raise HubError(
            f"{repo_id}: the name is taken by a repo quantkit did not publish (it holds {foreign[0]}); "
            "choose another repo id"
        )
    if private and info.private is False:
        raise HubError(f"{repo_id}: exists and is public but --private was given; make it private on the Hub first, or drop --private")


def _ensure_repo(api, step: _Step, repo_id: str, *, private: bool, branch: str, token: str) -> None:
    """Find or create ``repo_id`` (and ``branch``); refuse a repo that is not ours to overwrite."""
    from huggingface_hub.errors import RepositoryNotFoundError

    def lookup():
        try:
            return api.repo_info(repo_id, repo_type="model", token=token)
        except RepositoryNotFoundError:
            return None

    def exists_already(e: BaseException):
        # 409: the name is taken, or an earlier attempt created the repo and its answer was lost: look again
        found = step.run("look up the repo", lookup) if step.status(e) == 409 else None
        if found is not None:
            _check_existing(repo_id, found, private=private)
        return found

    info = step.run("look up the repo", lookup)
    if info is None:
        log.info("%s: creating the repo (%s)", repo_id, "private" if private else "public")
        step.run("create the repo", lambda: api.create_repo(repo_id, private=private, token=token), handle=exists_already)
    else:
        _check_existing(repo_id, info, private=private)
    if branch != "main":
        step.run(f"create the branch {branch}", lambda: api.create_branch(repo_id, branch=branch, exist_ok=True, token=token))


def _commit_all(api, step: _Step, artifact: Artifact, readme: bytes, *, repo_id: str, branch: str, summary: str, token: str):
    """One commit: every artifact file, README.md, and the removal of files an earlier push left that are gone now.

    Redone whole on a transient failure: files the Hub already holds (LFS objects, unchanged files) are not sent
    again, and a commit whose answer was lost is found already made (nothing left to change).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    uploads = {*artifact.files, README}

    def commit():
        remote = api.repo_info(repo_id, revision=branch, token=token)
        stale = sorted({s.rfilename for s in remote.siblings or []} - uploads - KEPT_REMOTE_FILES)
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(artifact.directory / f)) for f in artifact.files]
        operations.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=readme))
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        return api.create_commit(repo_id, operations, commit_message=summary, revision=branch, token=token)

    log.info("%s: uploading %d files to %s in one commit", repo_id, len(uploads), branch)
    return step.run("upload and commit the files", commit)


def push(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
) -> Published:
    """Check ``directory`` (a converted, evaluated artifact) and publish it to ``repo_id`` in one commit.

    ``repo_id`` without a namespace goes under the token's user. ``revision`` is a branch (created from main
    if missing). ``token`` defaults to huggingface_hub's (HF_TOKEN, then `hf auth login`). Raises InputError
    for a broken artifact (before any network call) and HubError for everything the Hub refuses.
    """
    from huggingface_hub import HfApi, ModelCard

    artifact = check_artifact(directory)  # before any network call
    token = _resolve_token(token)
    api = HfApi(token=token, library_name="quantkit", library_version=__version__)
    step = _Step(repo_id, token)
    who = step.run("check the token (whoami)", lambda: api.whoami(token=token))
    repo_id = step.repo_id = _full_repo_id(repo_id, who.get("name", ""))
    _check_owner(repo_id, who)
    branch = revision or "main"

    readme = str(render_card(artifact, repo_id=repo_id)).encode()
    ModelCard(readme.decode())  # the card must parse back before it is uploaded

    _ensure_repo(api, step, repo_id, private=private, branch=branch, token=token)
    summary = message or (
        f"Upload {repo_id.split('/')[1]}: {artifact.quantization['bits']}-bit GPTQ "
        f"(group {artifact.quantization['group_size']}) by quantkit {__version__}"
    )
    info = _commit_all(api, step, artifact, readme, repo_id=repo_id, branch=branch, summary=summary, token=token)
    log.info("%s: published %s", repo_id, info.commit_url)
    return Published(repo_id=repo_id, revision=branch, commit_oid=info.oid, commit_url=info.commit_url,
                     files=(*artifact.files, README))
