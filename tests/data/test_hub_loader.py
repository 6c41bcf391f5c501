"""The network path of data preparation, against a fake on 127.0.0.1: recipes whose remote source is a URL go
through `sources.load_hub` (datasets / fsspec over HTTP) exactly as they would to the internet, and a host
that cannot be reached is one UserError naming the recipe and the way out (data.source=PATH)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from optbench.data import prepare, recipes
from optbench.data.recipes import Recipe
from optbench.errors import UserError

TEXT = "".join(f"First Citizen {i}:\nBefore we proceed any further, hear me speak.\n\n" for i in range(40))
DOCS = [f"document {i}: the cat sat on the mat {'and purred ' * (i % 3)}" for i in range(20)]


class Server:
    """A static file server on loopback, in a thread, remembering the paths asked for; the files named in
    `truncated` are announced whole but sent half, the connection then closed (a network drop)."""

    def __init__(self, root: Path):
        requests = self.requests = []
        truncated = self.truncated = set()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                requests.append((self.command, self.path))

            def copyfile(self, source, outputfile):
                if self.path.lstrip("/") in truncated:
                    data = source.read()
                    outputfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                super().copyfile(source, outputfile)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-hub", daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    served = Server(root)
    yield root, served
    served.close()


def with_recipe(monkeypatch, recipe: Recipe) -> None:
    monkeypatch.setitem(recipes.RECIPES, recipe.name, recipe)


def shakespeare_at(url: str) -> Recipe:
    """shakespeare-char downloading from `url`, without the package's embedded copy (which comes before the hub)."""
    return dataclasses.replace(recipes.get_recipe("shakespeare-char"), hub_data_files=url, embedded=None)


def decode(prepared, split: str) -> str:
    return prepared.tokenizer().decode(np.asarray(prepared.tokens(split)).tolist())


def test_a_text_url_recipe_downloads_and_carves_like_nanogpt(server, data_cfg, monkeypatch):
    """shakespeare-char itself, its URL pointed at the fake: the char vocabulary and the 90/10 character cut."""
    root, served = server
    (root / "input.txt").write_text(TEXT)
    url = served.url("input.txt")
    with_recipe(monkeypatch, shakespeare_at(url))
    prepared = prepare(data_cfg(name="shakespeare-char"), progress=False)
    assert prepared.meta["source"] == f"hub text {url}"
    cut = int(len(TEXT) * 0.9)
    assert decode(prepared, "train") == TEXT[:cut] and decode(prepared, "val") == TEXT[cut:]
    assert prepared.vocab_size == len(set(TEXT))
    assert any(path == "/input.txt" for _, path in served.requests)


@pytest.mark.parametrize("builder, name", [("json", "docs.jsonl"), ("parquet", "docs.parquet")])
def test_json_and_parquet_urls_stream_documents(server, data_cfg, monkeypatch, builder, name):
    """A hub dataset of rows, streamed over HTTP; without a val split every 10th document goes to val."""
    root, served = server
    rows = [{"id": i, "body": doc} for i, doc in enumerate(DOCS)]
    if builder == "json":
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), root / name)
    with_recipe(monkeypatch, Recipe(name="fake-hub", description="rows on a fake hub", tokenizer="char",
                                    hub_path=builder, hub_data_files=served.url(name), text_field="body"))
    prepared = prepare(data_cfg(name="fake-hub"), progress=False)
    assert prepared.meta["source"] == f"hub {builder} {served.url(name)}"
    # char has no end-of-text token, so documents follow each other directly
    assert decode(prepared, "val") == "".join(DOCS[9::10])
    assert decode(prepared, "train") == "".join(d for i, d in enumerate(DOCS) if i % 10 != 9)
    assert any(path == f"/{name}" for _, path in served.requests)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["missing-file", "nothing-listening"])
def test_an_unreachable_url_is_one_user_error_and_nothing_is_prepared(server, data_cfg, monkeypatch, tmp_path,
                                                                     where):
    root, served = server
    url = served.url("gone.txt") if where == "missing-file" else f"http://127.0.0.1:{unused_port()}/input.txt"
    with_recipe(monkeypatch, shakespeare_at(url))
    with pytest.raises(UserError) as error:
        prepare(data_cfg(name="shakespeare-char"), progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"recipe 'shakespeare-char' needs network or data.source=PATH: cannot open text {url} (")
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())


def test_a_connection_dropped_mid_download_is_one_user_error(server, data_cfg, monkeypatch, tmp_path):
    root, served = server
    (root / "input.txt").write_text(TEXT * 20)
    served.truncated.add("input.txt")
    url = served.url("input.txt")
    with_recipe(monkeypatch, shakespeare_at(url))
    with pytest.raises(UserError) as error:
        prepare(data_cfg(name="shakespeare-char"), progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"recipe 'shakespeare-char' needs network or data.source=PATH: lost the connection "
                              f"reading text {url} (")
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())  # the half-written preparation was removed
