"""A stand-in for the Hugging Face Hub on 127.0.0.1: enough of its HTTP API for the real huggingface_hub client.

Speaks: whoami, repo create, model info (+ revision), tree listing, branch create, README YAML validation,
preupload, the git-LFS batch API with the basic transfer (presigned PUT + verify), NDJSON commits, and
file download (HEAD/GET .../resolve/REV/PATH with X-Repo-Commit / ETag / X-Linked-* headers).
Xet is never offered: the client must run with xet disabled (HF_HUB_DISABLE_XET).

State lives in memory. Failures are injected with `fail(method, path_regex, status=... | drop=True, times=n)`;
every request is recorded in `requests` as (method, path) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".png", ".pt")
LFS_MIN_SIZE = 1 << 20  # anything at least this large goes to LFS, whatever its name
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    size: int
    oid: str  # git blob oid of what git stores (the content, or the LFS pointer)
    content: bytes | None = None  # regular files
    lfs_sha256: str | None = None  # LFS files: content lives in the LFS store

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def head(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


@dataclass
class Failure:
    method: str
    pattern: re.Pattern
    status: int | None
    drop: bool
    times: int
    after: bool = False  # with drop: do the work, then drop the connection instead of answering


@dataclass
class User:
    name: str
    orgs: list[str] = field(default_factory=list)
    role: str = "write"


class HubState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[str, User] = {}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.upload_signatures: set[str] = set()
        self.failures: list[Failure] = []
        self.requests: list[tuple[str, str]] = []
        self.seen_authorization: list[str] = []


class FakeHub:
    """The server; use as a context manager or call start()/stop()."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- set-up helpers for tests ---
    def add_user(self, token: str, name: str, *, orgs: list[str] | None = None, role: str = "write") -> None:
        self.state.users[token] = User(name=name, orgs=list(orgs or []), role=role)

    def create_repo(self, repo_id: str, *, private: bool = False, files: dict[str, bytes] | None = None) -> Repo:
        with self.state.lock:
            repo = self._new_repo(repo_id, private)
            if files:
                stored = dict(repo.head("main").files)
                for path, data in files.items():
                    stored[path] = self._store(data, lfs=_wants_lfs(path, len(data)))
                self._commit(repo, "main", "seed files", stored)
            return repo

    def fail(self, method: str, path_regex: str, *, status: int | None = None, drop: bool = False, times: int = 1,
             after: bool = False) -> None:
        """The next `times` requests matching METHOD and the path regex get `status`, or a dropped connection
        (before the server acts on them, or with after=True once it has: the answer is what gets lost)."""
        self.state.failures.append(Failure(method.upper(), re.compile(path_regex), status, drop, times, after))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The full content of every file at `revision`."""
        commit = self.state.repos[repo_id].head(revision)
        return {path: (f.content if not f.is_lfs else self.state.lfs[f.lfs_sha256]) for path, f in commit.files.items()}

    def commits(self, repo_id: str) -> list[Commit]:
        return list(self.state.repos[repo_id].commits.values())

    def count(self, method: str, path_regex: str) -> int:
        pattern = re.compile(path_regex)
        return sum(1 for m, p in self.state.requests if m == method and pattern.search(p))

    # --- internals (called with the lock held) ---
    def _new_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        self.state.repos[repo_id] = repo
        self._commit(repo, "main", "initial commit", {".gitattributes": self._store(GITATTRIBUTES, lfs=False)})
        return repo

    def _store(self, data: bytes, *, lfs: bool) -> StoredFile:
        if not lfs:
            return StoredFile(size=len(data), oid=git_blob_oid(data), content=data)
        sha = hashlib.sha256(data).hexdigest()
        self.state.lfs[sha] = data
        return StoredFile(size=len(data), oid=git_blob_oid(_pointer(sha, len(data))), lfs_sha256=sha)

    def _commit(self, repo: Repo, branch: str, message: str, files: dict[str, StoredFile]) -> Commit:
        parent = repo.branches.get(branch)
        oid = hashlib.sha1(f"{parent}:{message}:{sorted(files)}:{len(repo.commits)}".encode()).hexdigest()
        commit = Commit(oid=oid, message=message, files=files, parent=parent)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit


def _pointer(sha: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


def _wants_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


class _Reply(Exception):
    """Raised by a route to answer with an error status."""

    def __init__(self, status: int, message: str, *, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    @property
    def state(self) -> HubState:
        return self.hub.state

    # --- plumbing ---
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, head: bool = False) -> None:
        if getattr(self, "_drop_reply", False):
            self._drop_reply = False
            self._drop()
            return
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        length = headers.pop("_length", len(body))
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        body = self._body() if method in ("POST", "PUT") else b""
        with self.state.lock:
            self.state.requests.append((method, path))
            self.state.seen_authorization.append(self.headers.get("Authorization") or "")
            failure = next(
                (f for f in self.state.failures if f.times > 0 and f.method == method and f.pattern.search(path)), None
            )
            if failure is not None:
                failure.times -= 1
        if failure is not None and failure.drop and failure.after:
            self._drop_reply = True
        elif failure is not None and failure.drop:
            self._drop()
            return
        elif failure is not None:
            self._json(failure.status, {"error": f"injected {failure.status}"}, {"X-Error-Message": "injected failure"})
            return
        for route_method, pattern, handler in _ROUTES:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                try:
                    handler(self, query=query, body=body, **match.groupdict())
                except _Reply as r:
                    headers = dict(r.headers)
                    if r.code:
                        headers["X-Error-Code"] = r.code
                    headers["X-Error-Message"] = r.message
                    self._send(r.status, json.dumps({"error": r.message}).encode(), headers, head=method == "HEAD")
                return
        self._json(404, {"error": f"no route for {method} {path}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # --- auth ---
    def _user(self, *, required: bool) -> User | None:
        header = self.headers.get("Authorization") or ""
        if not header.startswith("Bearer "):
            if required:
                raise _Reply(401, "Invalid credentials in Authorization header")
            return None
        user = self.state.users.get(header[len("Bearer ") :])
        if user is None:
            raise _Reply(401, "Invalid credentials in Authorization header")
        return user

    def _readable(self, repo_id: str) -> Repo:
        user = self._user(required=False)
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and (user is None or not _may_write(user, repo_id))):
            raise _Reply(404, "Repository not found", code="RepoNotFound")
        return repo

    def _writable(self, repo_id: str) -> Repo:
        user = self._user(required=True)
        repo = self._readable(repo_id)
        if not _may_write(user, repo_id) or user.role != "write":
            raise _Reply(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _revision(self, repo: Repo, rev: str) -> Commit:
        commit = repo.head(rev)
        if commit is None:
            raise _Reply(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return commit

    # --- routes ---
    def whoami(self, **_):
        user = self._user(required=True)
        self._json(200, {
            "type": "user",
            "name": user.name,
            "orgs": [{"name": o, "type": "org"} for o in user.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": user.role}},
        })

    def create(self, body: bytes, **_):
        user = self._user(required=True)
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or user.name}/{payload['name']}"
        if payload.get("type", "model") != "model":
            raise _Reply(400, "only model repos here")
        with self.state.lock:
            if not _may_write(user, repo_id) or user.role != "write":
                raise _Reply(403, f"You don't have the rights to create a model under the namespace {repo_id.split('/')[0]}")
            if repo_id in self.state.repos:
                raise _Reply(409, "You already created this model repo", headers={})
            self.hub._new_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def info(self, repo: str, rev: str = "main", **_):
        r = self._readable(repo)
        commit = self._revision(r, rev)
        self._json(200, {
            "id": repo, "_id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": commit.oid,
            "private": r.private, "gated": False, "disabled": False, "tags": [], "downloads": 0, "likes": 0,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def tree(self, repo: str, rev: str, **_):
        commit = self._revision(self._readable(repo), rev)
        entries = []
        for path, f in sorted(commit.files.items()):
            entry = {"type": "file", "path": path, "size": f.size, "oid": f.oid}
            if f.is_lfs:
                entry["lfs"] = {"oid": f.lfs_sha256, "size": f.size, "pointerSize": len(_pointer(f.lfs_sha256, f.size))}
            entries.append(entry)
        self._json(200, entries)

    def branch(self, repo: str, rev: str, body: bytes, **_):
        r = self._writable(repo)
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with self.state.lock:
            if rev in r.branches:
                raise _Reply(409, f"Reference already exists: refs/heads/{rev}")
            r.branches[rev] = self._revision(r, start).oid
        self._json(200, {})

    def validate_yaml(self, body: bytes, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.S)
        if match:
            try:
                meta = yaml.safe_load(match.group(1))
            except yaml.YAMLError as e:
                raise _Reply(400, f"invalid YAML: {e}") from e
            if not isinstance(meta, dict):
                raise _Reply(400, "metadata must be a mapping")
        self._json(200, {"errors": [], "warnings": []})

    def preupload(self, repo: str, rev: str, body: bytes, **_):
        commit = self._revision(self._writable(repo), rev)
        files = []
        for f in json.loads(body)["files"]:
            existing = commit.files.get(f["path"])
            lfs = _wants_lfs(f["path"], f["size"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.is_lfs else existing.oid
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def lfs_batch(self, repo: str, body: bytes, **_):
        self._writable(repo)
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise _Reply(400, "only uploads here")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size}
            if oid not in self.state.lfs:
                signature = secrets.token_hex(8)
                with self.state.lock:
                    self.state.upload_signatures.add(signature)
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-storage/{oid}?size={size}&sig={signature}"},
                    "verify": {"href": f"{self.hub.url}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid: str, query: dict, body: bytes, **_):
        if query.get("sig", [""])[0] not in self.state.upload_signatures:
            raise _Reply(403, "bad signature")
        if hashlib.sha256(body).hexdigest() != oid or len(body) != int(query["size"][0]):
            raise _Reply(400, "content does not match the oid or size")
        with self.state.lock:
            self.state.lfs[oid] = body
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def lfs_verify(self, repo: str, body: bytes, **_):
        self._writable(repo)
        payload = json.loads(body)
        data = self.state.lfs.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise _Reply(404, "object not uploaded")
        self._json(200, {})

    def commit(self, repo: str, rev: str, body: bytes, **_):
        r = self._writable(repo)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _Reply(400, "NDJSON commit must start with a header line")
        header = lines[0]["value"]
        with self.state.lock:
            base = self._revision(r, rev)
            if header.get("parentCommit") and header["parentCommit"] != base.oid:
                raise _Reply(412, "parent commit is not the head of the branch")
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = self.hub._store(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.state.lfs.get(value["oid"])
                    if data is None:
                        raise _Reply(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    files[value["path"]] = self.hub._store(data, lfs=True)
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    raise _Reply(400, f"unsupported commit operation {key}")
            commit = self.hub._commit(r, rev, header.get("summary", ""), files)
        self._json(200, {"commitUrl": f"{self.hub.url}/{repo}/commit/{commit.oid}", "commitOid": commit.oid,
                         "pullRequestUrl": None})

    def resolve(self, repo: str, rev: str, file: str, head: bool = False, **_):
        r = self._readable(repo)
        commit = self._revision(r, rev)
        f = commit.files.get(file)
        if f is None:
            raise _Reply(404, f"Entry not found: {file}", code="EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        data = f.content if not f.is_lfs else self.state.lfs[f.lfs_sha256]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{f.oid}"', "Content-Type": "application/octet-stream",
                   "Accept-Ranges": "bytes"}
        if f.is_lfs:
            headers.update({"X-Linked-Etag": f'"{f.lfs_sha256}"', "X-Linked-Size": str(f.size)})
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not head:
            start = int(match.group(1))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        if head:
            headers["_length"] = len(payload)
        self._send(status, payload, headers, head=head)

    def resolve_head(self, **kw):
        self.resolve(head=True, **kw)


def _may_write(user: User, repo_id: str) -> bool:
    return repo_id.split("/")[0] in (user.name, *user.orgs)


_ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("POST", r"/api/repos/create", _Handler.create),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", rf"/api/models/{REPO}", _Handler.info),
    ("GET", rf"/api/models/{REPO}/revision/{REV}", _Handler.info),
    ("GET", rf"/api/models/{REPO}/tree/{REV}", _Handler.tree),
    ("POST", rf"/api/models/{REPO}/branch/{REV}", _Handler.branch),
    ("POST", rf"/api/models/{REPO}/preupload/{REV}", _Handler.preupload),
    ("POST", rf"/api/models/{REPO}/commit/{REV}", _Handler.commit),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", _Handler.lfs_verify),
    ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", _Handler.lfs_put),
    ("GET", rf"/{REPO}/resolve/{REV}/(?P<file>.+)", _Handler.resolve),
    ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<file>.+)", _Handler.resolve_head),
]
