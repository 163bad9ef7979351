"""`pedit app` (pedit.app): its functions directly, its API through gradio_client against a server on
127.0.0.1 started here, and the page in a real headless Chromium (selenium), each checked against
what `pedit edit` / `pedit sticker-pack` write for the same input and seed, byte for byte.

The bundled toon model serves (the app's default, as the CLI's), so the results are the demo's.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOON = ROOT / "examples" / "toon.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _cli(*args):
    from pedit.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def cli_laughing(tmp_path_factory) -> bytes:
    """What `pedit edit examples/toon.png -d laughing --seed 0` writes (the oracle of every edit test)."""
    out = tmp_path_factory.mktemp("cli") / "toon_laughing.png"
    result = _cli("edit", TOON, "-d", "laughing", "--seed", 0, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    return out.read_bytes()


@pytest.fixture(scope="module")
def service():
    from pedit.app.service import AppConfig, PeditApp

    app = PeditApp(AppConfig())
    yield app
    app.close()
    assert not app.folders.root.exists()


def _upload(tmp_path, name="toon.png") -> str:
    """A copy of the example, as an upload arrives (a file in a folder the server chose)."""
    path = tmp_path / name
    shutil.copyfile(TOON, path)
    return str(path)


# ------------------------------------------------------------------------------------------ functions


def test_the_service_imports_no_web_framework_and_no_cli():
    code = ("import sys\nimport pedit.app.service, pedit.app.folders\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gradio', 'click', 'rich', 'fastapi'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_edit_writes_what_pedit_edit_writes(service, cli_laughing, tmp_path):
    from pedit.app.service import EditRequest

    seen = []
    out = service.edit(EditRequest(photo=_upload(tmp_path), direction="laughing"), lambda i, n, what: seen.append((i, n)))
    assert out.result.read_bytes() == cli_laughing
    assert out.result.name == "toon_laughing.png"
    steps = service.editor.default_options().steps  # the bundled model's pedit.json "sampling"
    assert seen[-1] == (steps, steps)  # progress reaches the last step
    mask = np.asarray(Image.open(out.mask))
    assert mask.shape == (128, 128) and 0 < (mask > 0).mean() < 1  # a real editing mask, not all or nothing
    assert Image.open(out.overlay).size == (128, 128)
    assert out.result.parent.parent.parent == service.folders.root  # inside this request's own folder


def test_the_seed_and_the_direction_reach_the_edit(service, cli_laughing, tmp_path):
    from pedit.app.service import EditRequest

    other_seed = service.edit(EditRequest(photo=_upload(tmp_path), direction="laughing", seed=1)).result.read_bytes()
    crying = service.edit(EditRequest(photo=_upload(tmp_path), direction="crying")).result.read_bytes()
    assert other_seed != cli_laughing and crying != cli_laughing


def test_several_directions_in_one_request_equal_one_request_each(service, cli_laughing, tmp_path):
    from pedit.app.service import EditRequest

    out = service.edit(EditRequest(photo=_upload(tmp_path), direction="laughing,crying"))
    assert [e.direction for e in out.edits] == ["laughing", "crying"]
    assert out.edits[0].result.read_bytes() == cli_laughing and out.result == out.edits[0].result
    crying = service.edit(EditRequest(photo=_upload(tmp_path, "toon2.png"), direction="crying"))
    assert out.edits[1].result.read_bytes() == crying.result.read_bytes()
    assert out.edits[1].mask.read_bytes() == crying.mask.read_bytes()
    with pytest.raises(Exception, match="more than once"):
        service.edit(EditRequest(photo=_upload(tmp_path), direction="laughing,laughing"))


def test_brush_mask_replace_keeps_every_pixel_outside_the_stroke(service, tmp_path):
    from pedit.app.service import EditRequest, brush_mask

    layer = np.zeros((128, 128, 4), np.uint8)
    layer[:, :64, 3] = 255  # the left half painted
    brush = brush_mask([layer])
    out = service.edit(EditRequest(photo=_upload(tmp_path), direction="laughing", brush=brush, mask_mode="replace"))
    before = np.asarray(Image.open(TOON).convert("RGB"))
    after = np.asarray(Image.open(out.result).convert("RGB"))
    assert np.array_equal(after[:, 64:], before[:, 64:])  # unpainted: the input's bytes
    assert not np.array_equal(after[:, :64], before[:, :64])  # painted: edited


def test_brush_mask_is_the_strongest_alpha_over_the_layers():
    from pedit.app.service import brush_mask
    from pedit.errors import InputImageError

    assert brush_mask(None) is None and brush_mask([]) is None
    assert brush_mask([np.zeros((4, 4, 4), np.uint8)]) is None  # nothing painted: no user mask at all
    a, b = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    a[0, 0, 3], b[0, 0, 3], b[1, 1, 3] = 51, 255, 102
    a[2, 2, :3] = 255  # colour without alpha is not paint
    np.testing.assert_allclose(brush_mask([a, b]), np.array([[1, 0, 0, 0], [0, 0.4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(InputImageError, match="RGBA"):
        brush_mask([np.zeros((4, 4, 3), np.uint8)])


@pytest.mark.parametrize("content, name", [(b"not an image at all", "notes.png"), (b"", "empty.jpg")])
def test_a_bad_upload_is_the_cli_message_and_leaves_nothing(service, tmp_path, content, name):
    from pedit.app.service import EditRequest
    from pedit.errors import PeditError

    bad = tmp_path / name
    bad.write_bytes(content)
    before = set(service.folders.root.iterdir())
    cli = _cli("edit", bad, "-d", "laughing", "-o", tmp_path / "x.png", "-q")
    assert cli.exit_code == 1
    with pytest.raises(PeditError) as e:
        service.edit(EditRequest(photo=str(bad), direction="laughing"))
    errors = [line for line in cli.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {e.value}"]  # the very line the CLI prints
    assert set(service.folders.root.iterdir()) <= before  # the failed request's folder is gone


def test_request_values_are_checked_as_the_cli_checks_them(tmp_path):
    from pedit.app.service import EditRequest
    from pedit.errors import ConfigError, InputImageError

    with pytest.raises(InputImageError, match="No photo was uploaded"):
        EditRequest(photo="", direction="laughing")
    with pytest.raises(ConfigError, match="steps"):
        EditRequest(photo="x.png", direction="laughing", steps=0)
    with pytest.raises(ConfigError, match="s_p"):
        EditRequest(photo="x.png", direction="laughing", s_p=float("nan"))
    with pytest.raises(ConfigError, match="mask_mode"):
        EditRequest(photo="x.png", direction="laughing", mask_mode="xor")


def test_an_unknown_direction_lists_the_models_own(service, tmp_path):
    from pedit.app.service import EditRequest
    from pedit.errors import DirectionError

    with pytest.raises(DirectionError, match="Available: angry, crying, flower, laughing"):
        service.edit(EditRequest(photo=_upload(tmp_path), direction="pirate"))
    assert service.directions == sorted(service.editor.directions)


def test_request_folders_are_private_and_removed(tmp_path):
    from pedit.app.folders import RequestFolders

    now = [0.0]
    folders = RequestFolders(root=tmp_path, keep_s=10, clock=lambda: now[0])
    a, b = folders.new(), folders.new()
    assert a != b and a.parent == b.parent == folders.root
    assert a.stat().st_mode & 0o777 == 0o700  # no other local user reads a request's photo
    folders.release(a, failed=True)
    assert not a.exists()  # a failed request's files go at once
    folders.release(b)
    now[0] = 9.9
    folders.sweep()
    assert b.exists()  # still being handed over
    now[0] = 10.0
    c = folders.new()  # each new request sweeps
    assert not b.exists() and c.exists()
    folders.close()
    assert not folders.root.exists()


def test_sticker_pack_is_what_pedit_sticker_pack_writes(service, tmp_path):
    progress = []
    out = service.sticker_pack(_upload(tmp_path, "selfie.png"), progress=lambda d, t, what: progress.append(what))
    cli = _cli("sticker-pack", TOON, "-o", tmp_path / "cli-pack", "-q")
    assert cli.exit_code == 0, cli.output
    assert [p.name for p in out.stickers] == ["01_angry.png", "02_shocked.png", "03_laughing.png", "04_crying.png"]
    for sticker in out.stickers:
        assert sticker.read_bytes() == (tmp_path / "cli-pack" / "stickers" / sticker.name).read_bytes()
    assert out.preview.read_bytes() == (tmp_path / "cli-pack" / "preview.png").read_bytes()
    with zipfile.ZipFile(out.archive) as z:
        names = set(z.namelist())
        assert {"manifest.json", "preview.png", "stickers/01_angry.png"} <= names
        assert z.read("stickers/04_crying.png") == out.stickers[3].read_bytes()
    assert out.downloads[0] == out.archive
    assert {"edit", "pack"} <= set(progress)


# ------------------------------------------------------------------------------------------ server


def server_defaults():
    from pedit.edit.editor import Editor

    from pedit.model.paths import DEFAULT_EDIT_MODEL

    return Editor.from_pretrained(DEFAULT_EDIT_MODEL, device="cpu").default_options()  # what the app edits with


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(service):
    """The app served on 127.0.0.1 in this process (its threads stop with `close`, or with the process)."""
    pytest.importorskip("gradio", reason="the web app needs gradio (pip install 'pedit[app]')")
    from pedit.app.ui import serve

    port = _free_port()
    demo = serve(service, port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_the_api_edits_as_pedit_edit_and_keeps_serving_after_a_bad_upload(server, cli_laughing, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    from pedit.photos.photo import load_photo

    client = gradio_client.Client(server, verbose=False, download_files=str(tmp_path / "downloads"))
    defaults = server_defaults()  # what the page's fields start at: the model's sampling settings
    args = ("laughing", [], None, "replace", 0, defaults.steps, defaults.scheduler, 1.5, 1.0, 4.0, True)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(Exception) as e:
        client.predict(handle_file(str(bad)), *args, api_name="/edit")
    with pytest.raises(Exception) as expected:
        load_photo(bad)
    # The CLI's message (it starts with the file's name), for the name the server gave the upload.
    assert str(expected.value).startswith(str(bad))
    assert str(expected.value)[len(str(bad)):] in str(e.value)
    (before, after), overlay, _, identity, downloads = client.predict(handle_file(str(TOON)), *args, api_name="/edit")
    assert [Path(d).read_bytes() for d in downloads] == [cli_laughing]
    assert Path(after).read_bytes() == cli_laughing
    assert Path(before).read_bytes() == TOON.read_bytes()
    assert Image.open(overlay).size == (128, 128)
    # Two directions in one request: the first's result as before, one download each.
    both = ("laughing", ["crying"], *args[2:])
    (_, after), _, gallery, _, downloads = client.predict(handle_file(str(TOON)), *both, api_name="/edit")
    assert Path(after).read_bytes() == cli_laughing and len(downloads) == 2
    assert [Path(d).name for d in downloads] == ["toon_laughing.png", "toon_crying.png"]
    shown = gallery["value"]  # an update: the gallery is shown for several directions
    assert gallery["visible"] and [item["caption"] for item in shown] == ["laughing", "crying"]
    assert [Path(item["image"]).read_bytes() for item in shown] == [Path(d).read_bytes() for d in downloads]


# ------------------------------------------------------------------------------------------ browser


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is not installed (apt-get install chromium chromium-driver; `make setup` does it as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'pedit[app]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if why := _browser_missing():
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1100",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _fetch_in_page(driver, url: str) -> bytes:
    """The bytes the page itself gets for `url` (the browser's own request)."""
    data = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {"
        "  let s = ''; new Uint8Array(b).forEach(c => s += String.fromCharCode(c)); done(btoa(s)); })"
        ".catch(e => done('ERROR ' + e));", url)
    assert not data.startswith("ERROR"), data
    return base64.b64decode(data)


def test_in_a_browser_the_laughing_edit_shows_pedit_edits_bytes(server, browser, cli_laughing, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90)
    browser.set_script_timeout(30)
    browser.get(server)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
    browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(TOON))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))
    box = browser.find_element(By.CSS_SELECTOR, "#direction input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("laughing")
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-index][aria-label='laughing']"))).click()
    assert box.get_attribute("value") == "laughing"
    browser.find_element(By.ID, "edit-button").click()

    def result_image(driver):
        for img in driver.find_elements(By.CSS_SELECTOR, "#before-after img"):
            if "toon_laughing.png" in (img.get_attribute("src") or ""):
                return img
        return False

    shown = wait.until(result_image)
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", shown))
    assert _fetch_in_page(browser, shown.get_attribute("src")) == cli_laughing
    link = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#download a")))
    assert _fetch_in_page(browser, link.get_attribute("href")) == cli_laughing
    shots = Path(os.environ.get("PEDIT_APP_SCREENSHOTS", tmp_path))  # docs/img regenerates docs/app.md's picture
    time.sleep(0.5)  # the slider's images settle after loading
    assert browser.save_screenshot(str(shots / "app-edit.png"))


# ------------------------------------------------------------------------------------------ command line


def test_pedit_app_without_gradio_says_what_to_install():
    code = ("import sys\nsys.modules['gradio'] = None  # import gradio -> ImportError, as when it is absent\n"
            "from pedit.cli import main\nmain(['app', '--port', '1'])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr == "Error: pedit app needs Gradio, which is not installed: pip install 'pedit[app]'.\n"
