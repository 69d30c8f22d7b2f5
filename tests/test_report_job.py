"""The per-run HTML report (issue 8), end to end: produced by the real job, rebuilt by
``clusterlake report`` from the output alone, and opened in headless Chromium."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser

import pytest

from clusterlake import cli
from clusterlake.pipeline import run_job, summary_text
from tests.conftest import job_config

SECTIONS = ("header", "sizes", "projection", "silhouette", "auto-k", "dendrogram", "profiles", "drift")


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.urls.append(a[key])


def _parse(path) -> _Sections:
    p = _Sections()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    p.feed(text)
    p.close()
    p.text = text
    return p


@pytest.fixture(scope="module")
def two_runs(spark, small_table, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report") / "out")
    over = {"kmeans.k": "auto", "kmeans.auto.max_k": 8, "kmeans.auto.sample_size": 3000,
            "density.enabled": True, "density.sample_size": 2000, "density.min_samples": 10,
            "hierarchical.enabled": True, "hierarchical.sample_size": 1000, "hierarchical.levels": "[3, 6]",
            "report.sample_size": 1500}
    first = run_job(job_config(small_table, out, **{**over, "job.run_date": "2026-11-20"}), spark=spark)
    second = run_job(job_config(small_table, out, **{**over, "job.run_date": "2026-11-21"}), spark=spark)
    return {"out": out, "first": first, "second": second}


def test_the_run_writes_a_self_contained_report_with_every_section(two_runs):
    r = two_runs["second"]
    assert r.report_path == os.path.join(two_runs["out"], "reports", f"{r.run_id}.html")
    assert f"report: {r.report_path}" in summary_text(r)
    p = _parse(r.report_path)
    assert sorted(p.ids) == sorted(SECTIONS)  # each once; drift: there was a previous run
    assert p.urls == [] and not re.search(r"https?://|src=\"//|url\(", p.text)
    assert len(p.imgs) >= 7 and all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in p.imgs)
    assert r.run_id in p.text and "test-job" in p.text and "2026-11-21" in p.text
    assert "auto:silhouette" in p.text  # how k was chosen
    # the first run has no previous run: no drift section
    assert "drift" not in _parse(two_runs["first"].report_path).ids


def test_report_command_rebuilds_it_from_the_output_alone(two_runs, capsys):
    r = two_runs["first"]
    os.remove(r.report_path)
    assert cli.main(["report", "--output", two_runs["out"], "--run", r.run_id]) == 0
    assert capsys.readouterr().out.strip() == r.report_path
    assert sorted(_parse(r.report_path).ids) == sorted(s for s in SECTIONS if s != "drift")
    # default: the newest run
    assert cli.main(["report", "--output", two_runs["out"]]) == 0
    assert capsys.readouterr().out.strip() == two_runs["second"].report_path
    assert cli.main(["report", "--output", two_runs["out"], "--run", "nope"]) == 2
    assert "run nope is not a committed run" in capsys.readouterr().err


def test_the_report_opens_in_chromium_without_errors(two_runs, tmp_path):
    from tests.browser import chromium_or_skip, open_page

    chromium_or_skip()
    shot = tmp_path / "report.png"
    page = open_page(two_runs["second"].report_path, str(shot))
    assert page.console_errors == [] and page.external_requests == []
    assert len(page.images) >= 7
    assert all(i["complete"] and i["natural_width"] > 0 and i["natural_height"] > 0 for i in page.images)
    assert shot.exists() and shot.stat().st_size > 10_000
