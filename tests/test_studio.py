"""The studio: its functions, the widget app driven headless, and the Voila page in headless Chromium."""
import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.apps import studio
from course_lib.__main__ import main as course_main

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def model():
    from course_lib.student import load_student

    torch.set_num_threads(1)
    return load_student()


@pytest.fixture
def no_inversion(monkeypatch):
    monkeypatch.setitem(sys.modules, "course_lib.inversion", None)  # import fails: "not available"


def _png(w=40, h=30, colour=(200, 120, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def _upload(name: str, content: bytes) -> tuple:
    return ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
             "last_modified": datetime.now()},)


# ----------------------------------------------------------------------------- functions


def test_resample_grid_keeps_constant_and_identity_grids():
    from course_lib.bilateral import identity_grid

    eye = identity_grid(1, 8, 16, 16)
    for c in (1, 4, 16, 64):
        r = studio.resample_grid(eye, c)
        assert r.shape == (1, 12, 8, c, c)
        assert torch.allclose(r, identity_grid(1, 8, c, c), atol=1e-6)
    g = torch.randn(2, 12, 4, 8, 8)
    assert studio.resample_grid(g, 8) is g
    assert torch.allclose(studio.resample_grid(g, 1)[..., 0, 0], g.mean(dim=(-1, -2)), atol=1e-5)  # 1 x 1: the mean
    with pytest.raises(ValueError):
        studio.resample_grid(g, 0)


def test_edit_student_slices_the_resampled_grid():
    from course_lib.bilateral import slice_apply
    from course_lib.student import Student, StudentConfig

    m = Student(StudentConfig(net_size=32, grid_size=8)).eval()
    torch.nn.init.normal_(m.head.weight, std=0.05)  # a grid that varies from cell to cell
    img = torch.rand(3, 40, 56)
    with torch.no_grad():
        grid = m.predict_grid(img[None], m.embed(["make it warmer"]))
        coarse = slice_apply(grid.mean(dim=(-1, -2), keepdim=True), m.guide_map(img[None]), img[None])[0].clamp(0, 1)
    assert torch.allclose(studio.edit_student(m, img, "make it warmer", cells=1), coarse, atol=1e-5)
    assert not torch.allclose(studio.edit_student(m, img, "make it warmer", cells=8), coarse, atol=1e-3)
    assert torch.equal(studio.edit_student(m, img, "  "), img)  # no instruction, no edit


def test_decode_upload_checks_and_one_line_errors():
    img = studio.decode_upload(_png(), "photo.png", max_bytes=10**6)
    assert img.shape == (3, 30, 40) and 0 <= img.min() and img.max() <= 1
    big = _png(400, 300) + b"\0" * 5000
    with pytest.raises(studio.StudioError, match=r"big\.png: .* MB is more than the .* MB upload limit"):
        studio.decode_upload(big, "big.png", max_bytes=1000)
    with pytest.raises(studio.StudioError, match="empty file"):
        studio.decode_upload(b"", "nothing.jpg", max_bytes=1000)
    with pytest.raises(studio.StudioError) as e:
        studio.decode_upload(b"certainly not a JPEG", "../../etc/x.jpg", max_bytes=1000)
    msg = str(e.value)
    assert msg.startswith("x.jpg: ") and "\n" not in msg and "course-upload" not in msg
    assert studio.upload_entries(_upload("a.png", b"123")) == [("a.png", b"123")]
    assert studio.upload_entries({"b.png": {"content": b"4"}}) == [("b.png", b"4")]  # ipywidgets 7


def test_compose_view_and_download(tmp_path):
    before = np.zeros((10, 20, 3), np.uint8)
    after = np.full((10, 20, 3), 200, np.uint8)
    assert (studio.compose_view(before, after, 0.0) == after).all()
    assert (studio.compose_view(before, after, 1.0) == before).all()
    half = studio.compose_view(before, after, 0.5)
    assert (half[:, :8] == 0).all() and (half[:, 12:] == 200).all() and (half[:, 9] == 255).all()
    assert studio.compose_view(before, after, mode="side by side").shape == (10, 44, 3)
    with pytest.raises(ValueError):
        studio.compose_view(before, after[:5])
    image = torch.rand(3, 30, 50)
    link = studio.download_html(image, "x_retouched.png")
    uri = re.search(r'href="data:image/png;base64,([^"]+)"', link).group(1)
    with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
        assert im.size == (50, 30)  # full resolution
    assert 'download="x_retouched.png"' in link
    text = studio.download_html(image, "big.png", max_data_uri_bytes=10, folder=tmp_path)
    assert str(tmp_path / "big.png") in text and (tmp_path / "big.png").is_file()


def test_inversion_lookup(monkeypatch):
    monkeypatch.setitem(sys.modules, "course_lib.inversion", None)
    assert studio.inversion_edit_fn() is None
    monkeypatch.setitem(sys.modules, "course_lib.inversion", types.ModuleType("course_lib.inversion"))
    assert studio.inversion_edit_fn() is None  # the module without edit_image
    fake = types.ModuleType("course_lib.inversion")
    fake.edit_image = lambda image, source, instruction: image
    monkeypatch.setitem(sys.modules, "course_lib.inversion", fake)
    assert studio.inversion_edit_fn() is fake.edit_image


# ----------------------------------------------------------------------------- the app, headless


def test_app_student_edit_timing_and_download(model, no_inversion):
    app = studio.Studio(model=model, photo="chelsea")
    first = app.view.value
    assert app.result is not None and "student:" in app.timing.value  # the student applies at once
    app.photo.value = "coffee"
    app.instruction.value = "make it much cooler"
    app.strength.value = 1.5
    app.model_choice.value = "student"
    app.apply_button.click()
    assert app.source.shape == (3, 400, 600)  # full resolution
    r = app.result
    assert r.image.shape == app.source.shape
    assert (r.image[2] - r.image[0]).mean() > (app.source[2] - app.source[0]).mean()  # cooler: bluer
    assert re.search(r"student: \d+ ms", app.timing.value) and "600 x 400 px" in app.timing.value
    assert app.view.value != first and app.view.value[:4] == b"\x89PNG"
    assert "data:image/png;base64," in app.download.value and "coffee_retouched.png" in app.download.value
    # strength 0 is the photo itself; grid cells change the edit
    app.strength.value = 0.0
    assert (app.result.image - app.source).abs().max() <= 1e-5
    app.strength.value = 1.0
    app.instruction.value = "lift the shadows"
    app.cells.value = 1
    assert "grid 1 x 1" in app.timing.value and app.result.image.shape == app.source.shape
    # views are cheap re-renders
    v = app.view.value
    app.view_mode.value = "side by side"
    assert app.view.value != v


def test_app_teacher_upload_and_unavailable_inversion(model, tiny_teacher, no_inversion):
    app = studio.Studio(model=model, teacher_loader=lambda: tiny_teacher, teacher_steps=2)
    assert studio.INVERSE not in app.model_choice.options
    assert app.inverse_unavailable.disabled and "not available" in app.inverse_note.value
    app.model_choice.value = "teacher"
    assert "32 x 32 px" in app.note.value and app.cells.disabled
    before = app.view.value
    app.instruction.value = "make it warmer"  # the teacher waits for Apply
    assert app.view.value == before
    app.apply_button.click()
    assert "teacher:" in app.timing.value and "2 DDIM steps" in app.timing.value
    assert app.result.image.shape == app.source.shape and app.view.value != before
    # uploads: a good one becomes the photo, a bad or too-large one leaves it and says why
    app.model_choice.value = "student"
    app.upload.value = _upload("mine.png", _png(64, 48))
    assert app.photo.value == "uploaded: mine.png" and app.source.shape == (3, 48, 64)
    assert app.upload.value == ()  # bytes forgotten
    assert "student:" in app.timing.value and "64 x 48 px" in app.timing.value
    app.upload.value = _upload("notes.png", b"hello")
    assert "error: notes.png" in app.status.value and app.photo.value == "uploaded: mine.png"
    app.max_upload_bytes = 100
    app.upload.value = _upload("huge.png", _png(300, 300))
    assert "upload limit" in app.status.value


def test_app_inverse_and_edit_when_available(model, monkeypatch):
    calls = []

    def edit_image(image, source_instruction, instruction):
        calls.append((tuple(image.shape), source_instruction, instruction))
        return torch.zeros(1, 3, 16, 16)  # any size: the studio resizes it back

    fake = types.ModuleType("course_lib.inversion")
    fake.edit_image = edit_image
    monkeypatch.setitem(sys.modules, "course_lib.inversion", fake)
    app = studio.Studio(model=model)
    assert studio.INVERSE in app.model_choice.options and app.inverse_note.value == ""
    app.model_choice.value = studio.INVERSE
    assert app.source_instruction.layout.display == ""
    app.source_instruction.value = "a cat"
    app.instruction.value = "make it dark"
    app.apply_button.click()
    assert calls[-1] == ((3, 300, 451), "a cat", "make it dark")
    assert app.result.image.shape == app.source.shape and app.result.image.max() == 0
    assert app.timing.value.startswith('<span class="studio-ms">Inverse-and-Edit:')
    fake.edit_image = None
    app.inversion = lambda image, source, instruction: 1 / 0  # a failing model: one line, the app survives
    assert app.apply() is None and "error: ZeroDivisionError: division by zero" in app.status.value


# ----------------------------------------------------------------------------- the command and the page


def test_studio_command_help_and_errors(capsys):
    with pytest.raises(SystemExit) as e:
        course_main(["studio", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "--max-upload-mb" in out and "127.0.0.1" in out
    assert course_main(["studio", "--port", "0"]) == 2
    assert course_main(["studio", "--max-upload-mb", "-1"]) == 2
    assert capsys.readouterr().err.count("error:") == 2
    from course_lib.__main__ import COMMANDS

    assert COMMANDS["studio"][0] == "course_lib.apps.studio:main"


def test_studio_token_only_off_this_machine(capsys):
    for host in studio.LOCAL_HOSTS:
        assert studio.studio_token(host, None, False) is None
    tokens = {studio.studio_token("0.0.0.0", None, False) for _ in range(3)}
    assert len(tokens) == 3 and all(len(t) == 48 for t in tokens)  # fresh, 192 bits each
    assert studio.studio_token("0.0.0.0", "my-token-1", False) == "my-token-1"
    assert studio.studio_token("127.0.0.1", "my-token-1", False) == "my-token-1"
    assert studio.studio_token("0.0.0.0", None, True) is None
    assert studio.studio_url("0.0.0.0", 8866, "abc") == "http://0.0.0.0:8866/?token=abc"
    assert studio.studio_url("::1", 8866, None) == "http://[::1]:8866/"
    assert course_main(["studio", "--token", "short"]) == 2
    assert course_main(["studio", "--token", "long-enough-1", "--no-token"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and err.count("\n") == 2  # one line each


def test_voila_files(tmp_path):
    import json

    import nbformat

    nb = nbformat.read(str(studio.write_notebook(tmp_path)), as_version=4)
    assert "Studio.from_env()" in nb.cells[0].source
    cfg = json.loads(studio.write_voila_config(tmp_path, 20).read_text())
    assert cfg["Voila"]["tornado_settings"]["websocket_max_message_size"] >= 20 * 2**20
    cmd = studio.voila_command(tmp_path / "studio.ipynb", "127.0.0.1", 9999)
    assert "--no-browser" in cmd and "--Voila.ip=127.0.0.1" in cmd and "--port=9999" in cmd
    assert f"--template={studio.VOILA_TEMPLATE}" in cmd
    assert "token" not in json.dumps(cfg)  # no token: none asked for
    path = studio.write_voila_config(tmp_path, 20, token="abcdef123456")
    assert json.loads(path.read_text())["Voila"]["token"] == "abcdef123456"
    assert path.stat().st_mode & 0o077 == 0  # the owner's alone: the token is not in a process list either
    assert "abcdef123456" not in " ".join(cmd)
    env = studio.voila_env(20, base={"JUPYTER_PATH": "/elsewhere"})
    assert env["JUPYTER_PATH"].split(os.pathsep) == [str(studio.JUPYTER_DATA), "/elsewhere"]
    template = studio.JUPYTER_DATA / "voila" / "templates" / studio.VOILA_TEMPLATE
    assert json.loads((template / "conf.json").read_text())["base_template"] == "lab"
    assert "{%- extends 'voila/templates/lab/index.html.j2' -%}" in (template / "index.html.j2").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"studio exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    pytest.fail(f"studio did not listen on {port}:\n{log.read_text()[-2000:]}")


@pytest.mark.timeout(180)
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                  "(scripts/setup.sh installs it with apt-get when run as root)")
def test_studio_page_in_headless_chromium(tmp_path):
    """python -m course_lib studio --host 0.0.0.0, opened in headless Chromium: a request without the
    printed token is refused; with it, apply an instruction and see the result."""
    import urllib.error
    import urllib.request

    pytest.importorskip("voila", reason="voila is not installed")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    port = _free_port()
    log = tmp_path / "studio.log"
    env = {**os.environ, "COURSE_MODE": "fast"}
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "course_lib", "studio", "--host", "0.0.0.0", "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        _wait_for_port(port, proc, log, time.time() + 60)
        # exposed on every address: a random token, printed in the URL to open
        found = re.search(rf"serving on http://0\.0\.0\.0:{port}/\?token=([0-9a-f]{{48}}) ", log.read_text())
        assert found, log.read_text()
        token = found.group(1)

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
                return None

        opener = urllib.request.build_opener(NoRedirect)
        for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/?token=wrong{token[5:]}"):
            with pytest.raises(urllib.error.HTTPError) as refused:  # 403, or 302 to a login page
                opener.open(url, timeout=30)
            assert refused.value.code in (302, 403), (url, refused.value.code)
        with opener.open(f"http://127.0.0.1:{port}/?token={token}", timeout=60) as r:
            assert r.status == 200
        with sync_api.sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            outside: list[str] = []

            def only_this_machine(route):  # the page must work with no network: block and count the rest
                url = route.request.url
                if re.match(rf"^(https?|wss?)://127\.0\.0\.1:{port}/", url) or url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(url)
                    route.abort()

            ctx.route("**/*", only_this_machine)
            try:
                page = ctx.new_page()
                page.goto(f"http://127.0.0.1:{port}/?token={token}", timeout=60_000)
                # the app applies the student once when it starts: a timing appears
                page.wait_for_selector(".studio-timing .studio-ms", timeout=60_000)
                src = page.get_attribute("img.studio-view", "src")
                page.select_option(".studio-photo select", "coffee")
                page.wait_for_function("s => document.querySelector('img.studio-view').src !== s", arg=src,
                                       timeout=30_000)
                src = page.get_attribute("img.studio-view", "src")
                page.fill(".studio-instruction input", "make it much darker")
                page.click("button.studio-apply")
                page.wait_for_function("s => document.querySelector('img.studio-view').src !== s", arg=src,
                                       timeout=30_000)
                timing = page.inner_text(".studio-timing")
                assert re.search(r"student: \d+ ms \(600 x 400 px", timing), timing
                assert "data:image/png;base64," in page.get_attribute(".studio-download a", "href")
                # an upload through the browser becomes the photo and is retouched at its own size
                (tmp_path / "mine.png").write_bytes(_png(90, 60))
                with page.expect_file_chooser() as chooser:  # the widget's file input is not in the DOM
                    page.click("button.studio-upload")
                chooser.value.set_files(str(tmp_path / "mine.png"))
                page.wait_for_function("() => document.querySelector('.studio-timing').innerText.includes('90 x 60 px')",
                                       timeout=30_000)
                assert not outside, f"the page asked for addresses outside this machine: {sorted(set(outside))}"
            finally:
                ctx.close()
    finally:
        proc.send_signal(signal.SIGTERM)  # the command stops Voila, which shuts its kernel down
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert time.time() - t0 < 120, f"took {time.time() - t0:.0f} s"


def test_app_shows_what_the_student_understood(no_inversion):
    """A student with "understood as" heads: the line under the instruction says what it read."""
    from course_lib import world
    from course_lib.student import Student, StudentConfig

    m = Student(StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,),
                              readout=world.READOUT_LABELS, readout_threshold=0.0)).eval()
    app = studio.Studio(model=m, photo="chelsea")
    app.instruction.value = "make the sky warmer"
    assert "understood: " in app.understood.value
    app.instruction.value = "   "
    assert "understood:" not in app.understood.value
