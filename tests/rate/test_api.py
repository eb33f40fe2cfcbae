"""The JSON API against a real server process: shapes, bad bodies, limits, traversal, password, concurrency,
durability across kill -9, a changed task file."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from rate_helpers import RateServer, image_tasks, response_tasks, write_image, write_tasks
from vlm_tune.rate.guard import MAX_BODY_BYTES

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    (folder / "secret.txt").write_text("TOP SECRET")
    running = RateServer(response_tasks(folder, n_items=3), folder / "team.db").start()
    yield running
    running.kill()


def rate_all(server: RateServer, rater: str, score: int = 4) -> dict:
    item = server.get(f"/api/next?rater={rater}")[1]
    status, body = server.post("/api/ratings", {"rater": rater, "item_id": item["item_id"],
                                                "scores": {r["response_id"]: score for r in item["responses"]}})
    assert status == 200, body
    return item


# --- shapes ---


def test_next_rating_progress_shapes(server):
    status, item = server.get("/api/next?rater=shape")
    assert status == 200
    assert set(item) == {"item_id", "image_url", "prompt", "responses"}
    assert all(set(r) == {"response_id", "text"} for r in item["responses"]) and len(item["responses"]) == 3
    assert "<script>alert(1)</script> & <b>bold</b>" in [r["text"] for r in item["responses"]]  # raw text, page escapes
    status, image, headers = server.request("GET", item["image_url"])
    assert status == 200 and image[:8] == b"\x89PNG\r\n\x1a\n" and headers["content-type"] == "image/png"
    for _ in range(3):
        rate_all(server, "shape")
    assert server.get("/api/next?rater=shape") == (200, {"done": True})
    status, progress = server.get("/api/progress")
    assert status == 200 and set(progress) == {"mode", "items", "removed_items", "raters", "alpha"}
    assert progress["items"] == 3 and progress["mode"] == "response"
    row = next(r for r in progress["raters"] if r["rater"] == "shape")
    assert row["done"] == 3 and row["ratings"] == 9
    assert set(progress["alpha"]) >= {"raw", "z", "n_items", "n_raters", "n_ratings"}


def test_image_mode_item_is_its_own_response(tmp_path, start_server):
    running = start_server(image_tasks(tmp_path), tmp_path / "team.db")
    assert running.get("/api/config")[1]["mode"] == "image"
    item = running.get("/api/next?rater=ann")[1]
    assert item["responses"] == [{"response_id": "image", "text": ""}]
    assert "ckpt" not in json.dumps(item)  # the group (checkpoint) stays hidden
    assert running.post("/api/ratings", {"rater": "ann", "item_id": item["item_id"], "scores": {"image": 5}})[0] == 200
    progress = running.get("/api/progress")[1]
    assert progress["mode"] == "image" and progress["raters"][0]["done"] == 1 and progress["items"] == 6


def test_page_and_assets_are_local_and_escape_text(server):
    status, page, headers = server.request("GET", "/")
    assert status == 200 and b"/static/rate.js" in page
    assert "default-src 'self'" in headers["content-security-policy"]
    assert b"http://" not in page and b"https://" not in page  # no CDN
    for name in ("rate.js", "status.js", "common.js", "style.css"):
        status, asset, _ = server.request("GET", f"/static/{name}")
        assert status == 200 and b"https://" not in asset
        if name.endswith(".js"):
            assert b"innerHTML" not in asset and b"insertAdjacentHTML" not in asset and b"document.write" not in asset
    assert server.get("/status")[0] == 200


# --- bad requests ---

BAD_BODIES = [
    ({"item_id": "ITEM", "scores": "ALL4"}, 400, "missing rater"),
    ({"rater": "  ", "item_id": "ITEM", "scores": "ALL4"}, 400, "missing rater"),
    ({"rater": 7, "item_id": "ITEM", "scores": "ALL4"}, 400, "rater must be a string"),
    ({"rater": "x" * 65, "item_id": "ITEM", "scores": "ALL4"}, 400, "longer than 64"),
    ({"rater": "bad\nname", "item_id": "ITEM", "scores": "ALL4"}, 400, "control characters"),
    ({"rater": "eve", "scores": "ALL4"}, 400, "missing item_id"),
    ({"rater": "eve", "item_id": "nope", "scores": "ALL4"}, 404, "unknown item"),
    ({"rater": "eve", "item_id": "ITEM", "scores": {}}, 400, "scores must be an object"),
    ({"rater": "eve", "item_id": "ITEM", "scores": [4, 4, 4]}, 400, "scores must be an object"),
    ({"rater": "eve", "item_id": "ITEM", "scores": {"zzz": 4}}, 400, "unknown response"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ALL0"}, 400, "integer 1-5"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ALL6"}, 400, "integer 1-5"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ALL3.5"}, 400, "integer 1-5"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ALLtrue"}, 400, "integer 1-5"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ALL'4'"}, 400, "integer 1-5"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ONE4"}, 400, "scores missing for response"),
    ({"rater": "eve", "item_id": "ITEM", "scores": "ALL4", "admin": True}, 400, "unknown field"),
]


def _fill(body: dict, item: dict) -> dict:
    ids = [r["response_id"] for r in item["responses"]]
    body = {k: (item["item_id"] if v == "ITEM" else v) for k, v in body.items()}
    scores = body.get("scores")
    if isinstance(scores, str) and scores.startswith("ALL"):
        value = {"true": True, "'4'": "4"}.get(scores[3:]) or json.loads(scores[3:])
        body["scores"] = {rid: value for rid in ids}
    elif scores == "ONE4":
        body["scores"] = {ids[0]: 4}
    return body


@pytest.mark.parametrize("body, status, message", BAD_BODIES, ids=[m for _, _, m in BAD_BODIES])
def test_bad_bodies_are_refused_with_one_line(server, body, status, message):
    item = server.get("/api/next?rater=eve")[1]
    got_status, got = server.post("/api/ratings", _fill(body, item))
    assert got_status == status and set(got) == {"error"} and message in got["error"] and "\n" not in got["error"]
    assert server.get("/api/rater?rater=eve")[1]["done"] == 0  # nothing was recorded


def test_not_json_wrong_type_and_queries(server):
    assert server.request("POST", "/api/ratings", raw=b"{nope")[:2] == (400, {"error": "body is not valid JSON"})
    assert server.request("POST", "/api/ratings", raw=b"[1]")[:2] == (400, {"error": "body must be a JSON object"})
    status, body, _ = server.request("POST", "/api/ratings", raw=b"rater=a", headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]
    assert server.get("/api/next")[0] == 400 and server.get("/api/next?rater=")[1] == {"error": "missing rater"}
    assert server.get("/api/next?rater=" + "x" * 500)[0] == 400
    assert server.request("DELETE", "/api/ratings")[0] == 405
    assert server.post("/api/skip", {"rater": "eve", "item_id": "nope"})[0] == 404


def test_oversize_bodies(server):
    item = server.get("/api/next?rater=big")[1]
    huge = {"rater": "big", "item_id": item["item_id"], "scores": {r["response_id"]: 4 for r in item["responses"]},
            "padding": "x" * (MAX_BODY_BYTES + 10)}
    status, body = server.post("/api/ratings", huge)
    assert status == 413 and "too large" in body["error"]

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(MAX_BODY_BYTES // 1000 + 5):
            yield b" " * 1000

    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/api/ratings", body=chunks(), headers={"Content-Type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and "too large" in json.loads(response.read())["error"]
    connection.close()
    status, _, _ = server.request("GET", "/api/next?rater=big", headers={"X-Junk": "y" * 70_000})
    assert status == 431
    assert server.get("/api/next?rater=big&x=" + "y" * 5000)[0] == 414
    assert server.get("/api/rater?rater=big")[1]["done"] == 0


TRAVERSALS = ["/images/../tasks.jsonl", "/images/..%2ftasks.jsonl", "/images/%2e%2e%2fsecret.txt",
              "/images/%2e%2e/%2e%2e/secret.txt", "/images/img%2f0.png", "/images/img/0.png", "/images/0.png",
              "/static/..%2f..%2f..%2fpyproject.toml", "/static/../server.py", "/static/%2e%2e%2fserver.py",
              "/static/rate.html", "/images/..%252fsecret.txt", "/../secret.txt", "/%2e%2e/secret.txt"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_traversal(server, path):
    status, body, _ = server.request("GET", path)
    assert status == 404 and isinstance(body, dict) and set(body) == {"error"}


def test_symlinks_cannot_escape(tmp_path, start_server):
    outside = write_image(tmp_path / "outside" / "private.png", color=(1, 2, 3))
    tasks = response_tasks(tmp_path / "team", n_items=2)
    (tmp_path / "team" / "img" / "link.png").symlink_to(outside)  # in the folder but not listed
    running = start_server(tasks, tmp_path / "team.db")
    assert running.get("/images/link.png")[0] == 404
    item = running.get("/api/next?rater=ann")[1]
    listed = tmp_path / "team" / "img" / f"{item['prompt'].rsplit(' ', 1)[1]}.png"  # "describe picture K"
    assert running.request("GET", item["image_url"])[1] == listed.read_bytes()
    listed.unlink()
    listed.symlink_to(outside)  # swapped for a link after the start: refused
    status, body, _ = running.request("GET", item["image_url"])
    assert status == 403 and "changed since the server started" in body["error"]


# --- password ---


def test_password(tmp_path, start_server):
    running = start_server(response_tasks(tmp_path), tmp_path / "team.db", "--password", "s3cret")
    assert running.get("/api/config")[1]["password_required"] is True
    assert running.get("/")[0] == 200  # the page itself holds no data
    status, body = running.get("/api/next?rater=ann")
    assert status == 401 and set(body) == {"error"}
    assert running.get("/api/progress")[0] == 401
    assert running.get("/images/anything")[0] == 401
    assert running.post("/api/login", {"password": "wrong"}) == (401, {"error": "wrong password"})
    status, _, headers = running.request("POST", "/api/login", {"password": "s3cret"})
    assert status == 200 and "httponly" in headers["set-cookie"].lower() and "s3cret" not in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";")[0]
    assert running.get("/api/next?rater=ann", headers={"Cookie": cookie})[0] == 200
    assert running.get("/api/next?rater=ann", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert running.get("/api/next?rater=ann", headers={"Authorization": "Bearer nope"})[0] == 401
    assert running.get("/api/next?rater=ann", headers={"Cookie": "vlm_rate_token=forged"})[0] == 401


def test_public_host_without_password_warns(tmp_path, start_server):
    running = start_server(response_tasks(tmp_path), tmp_path / "team.db", host="0.0.0.0")
    _, err = running.stop()
    assert "warning: listening on 0.0.0.0 without a password" in err


# --- concurrency and durability ---


def test_eight_raters_at_once_lose_and_duplicate_nothing(tmp_path, start_server):
    n_items, raters = 6, [f"rater-{k}" for k in range(8)]
    running = start_server(response_tasks(tmp_path, n_items=n_items), tmp_path / "team.db")
    failures = []

    def rate(rater: str) -> None:
        try:
            first = None
            while True:
                item = running.get(f"/api/next?rater={rater}")[1]
                if item.get("done"):
                    break
                first = first or item
                status, body = running.post("/api/ratings", {"rater": rater, "item_id": item["item_id"], "scores": {
                    r["response_id"]: 1 + (len(r["text"]) + len(rater)) % 5 for r in item["responses"]}})
                assert status == 200, body
            status, _ = running.post("/api/ratings", {"rater": rater, "item_id": first["item_id"],
                                                      "scores": {r["response_id"]: 5 for r in first["responses"]}})
            assert status == 200
        except Exception as exc:  # reported after the join
            failures.append(f"{rater}: {exc!r}")

    threads = [threading.Thread(target=rate, args=(rater,)) for rater in raters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    with sqlite3.connect(tmp_path / "team.db") as con:
        assert con.execute("SELECT COUNT(*) FROM ratings").fetchone()[0] == 8 * n_items * 3
        assert con.execute("SELECT COUNT(*) FROM (SELECT DISTINCT rater, item_id, response_id FROM ratings)"
                           ).fetchone()[0] == 8 * n_items * 3
        assert con.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 8 * (n_items + 1) * 3
        assert con.execute("SELECT COUNT(*) FROM ratings WHERE score = 5").fetchone()[0] >= 8 * 3
    progress = running.get("/api/progress")[1]
    assert {r["rater"]: r["done"] for r in progress["raters"]} == {rater: n_items for rater in raters}


def test_acknowledged_rating_survives_kill_9(tmp_path, start_server):
    tasks, db = response_tasks(tmp_path, n_items=3), tmp_path / "team.db"
    running = start_server(tasks, db)
    item = running.get("/api/next?rater=ann")[1]
    scores = {r["response_id"]: k + 1 for k, r in enumerate(item["responses"])}
    assert running.post("/api/ratings", {"rater": "ann", "item_id": item["item_id"], "scores": scores})[0] == 200
    running.kill()  # right after the 200: no shutdown, no checkpoint
    again = start_server(tasks, db)
    assert again.get("/api/rater?rater=ann")[1] == {"rater": "ann", "done": 1, "skipped": 0, "items": 3}
    assert again.get("/api/next?rater=ann")[1]["item_id"] != item["item_id"]  # resumes after it
    back = again.get(f"/api/previous?rater=ann&item_id={again.get('/api/next?rater=ann')[1]['item_id']}")[1]
    assert back["item_id"] == item["item_id"] and back["scores"] == scores


def test_changed_task_file_offers_added_and_reports_removed(tmp_path, start_server):
    tasks, db = response_tasks(tmp_path, n_items=3), tmp_path / "team.db"
    running = start_server(tasks, db)
    rated = rate_all(running, "ann")
    running.stop()
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    kept = [row for row in rows if row["prompt"] != rated["prompt"]]
    write_image(tmp_path / "img" / "new.png", color=(9, 9, 9))
    write_tasks(tasks, kept + [{"image": "img/new.png", "prompt": "a new one", "responses": ["x", "y"]}])
    again = start_server(tasks, db)
    out = again.banner()
    assert "the task file changed since it was last served: 1 item(s) added" in out and "1 removed now" in out
    progress = again.get("/api/progress")[1]
    assert progress["items"] == 3 and progress["removed_items"] == 1
    assert again.get("/api/rater?rater=ann")[1]["done"] == 0
    offered = {rate_all(again, "ann")["prompt"] for _ in range(3)}
    assert "a new one" in offered and rated["prompt"] not in offered
    status, body = again.post("/api/ratings", {"rater": "ann", "item_id": rated["item_id"],
                                               "scores": {r["response_id"]: 3 for r in rated["responses"]}})
    assert status == 404
    with sqlite3.connect(db) as con:  # the removed item's ratings are still there
        assert con.execute("SELECT COUNT(*) FROM ratings WHERE item_id = ?", (rated["item_id"],)).fetchone()[0] == 3
