"""Re-run only what changed: config edits and package-code edits schedule exactly their dependents.

The fast tests plan a micro grid whose outputs are stand-ins recorded with `snakemake --touch`
(so Snakemake holds the params, including code versions, of every job); the slow test first
runs the cheap data stages for real.
"""

import json

import pytest
import yaml
from conftest import REPO, WorkflowCopy

from lalm_slu.report.figures import find_chromium

RUN_B10 = "tiny-en_direct_mixing_b10_s0"
RUN_B50 = "tiny-en_direct_mixing_b50_s0"
RUN_TEXT = "tiny-en_text_only_b0_s0"
RUN_DE = "tiny-en2de_curriculum_b5shot_s0"
RUN_FR = "tiny-en2fr_curriculum_b5shot_s0"
PREFIX_DE = "tiny-en2de_curriculum_phase1_s0"  # the first phase RUN_DE shares with its other budgets
REPORT = {"results/metrics.csv", "results/comparisons.csv", "results/tables", "results/figures"}


def micro_config(source_dir="data/tiny"):
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    return {
        "corpora": {
            "tiny": {
                "reader": "massive",
                "source": {lang: f"{source_dir}/{lang}.jsonl" for lang in ("en", "de", "fr")},
                "languages": ["en", "de", "fr"],
                "max_utterances": {"train": 30, "dev": 10, "test": 8},
            }
        },
        "speech": {"tts": {"chunk_size": 8, "voices": MICRO_VOICES}},
        "grid": {
            "monolingual": [{"corpus": "tiny", "lang": "en", "schemes": ["text_only", "direct_mixing"], "budgets": [10, 50]}],
            "crosslingual": [
                {"corpus": "tiny", "source": "en", "targets": ["de"], "schemes": ["curriculum"],
                 "target_speech_budgets": ["5shot"]}
            ],
        },  # fmt: skip
        "model": {"path": "models/demo"},
        "decode": {"modalities": ["speech"]},
        "prompt": default["prompt"],
        "schemes": default["schemes"],
        "demo_model": {"train_data": [], "eval_data": []},  # the recipe names corpora this grid lacks
    }


# The shipped voice table with French voices added (the micro corpus speaks en, de and fr).
MICRO_VOICES = "voices.tsv"
FRENCH_VOICES = "fr\ttrain\tfr+m1\t160\t50\nfr\ttrain\tfr+f2\t160\t50\nfr\ttest\tfr+m3\t160\t50\n"


def write_config(copy, config):
    (copy.root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (copy.root / MICRO_VOICES).write_text((REPO / "workflow/configs/voices.tsv").read_text() + FRENCH_VOICES)


def run_outputs(run, testset):
    return {
        f"results/mixtures/{run}.parquet",
        f"results/runs/{run}/model",
        f"results/runs/{run}/predictions/{testset}.speech.jsonl",
        f"results/runs/{run}/metrics/{testset}.speech.json",
    }


def prefix_outputs(prefix):
    return {f"results/prefixes/{prefix}/mixture.parquet", f"results/prefixes/{prefix}/checkpoint"}


def budget_outputs(lang, split, budget):
    stem = f"results/budgets/tiny/{lang}/{split}/seed0/{budget}"
    return {f"{stem}.txt", f"{stem}.json"}


def stand_in_everything(copy):
    """Create every planned output as an empty file or directory and record it as up to date."""
    for path in copy.summary():
        target = copy.root / path
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
    copy.snakemake("--touch", "--forceall")
    assert copy.pending() == set()


@pytest.fixture(scope="module")
def planned_template(tmp_path_factory):
    """The micro grid, fully planned and recorded as done (no job really runs)."""
    copy = WorkflowCopy(tmp_path_factory.mktemp("planned"))
    for lang in ("en", "de", "fr"):
        (copy.root / "data/tiny").mkdir(parents=True, exist_ok=True)
        (copy.root / f"data/tiny/{lang}.jsonl").touch()
    (copy.root / "models/demo").mkdir(parents=True)
    write_config(copy, micro_config())
    stand_in_everything(copy)
    return copy


@pytest.fixture
def planned(planned_template, tmp_path):
    """A private copy of the planned grid (file times and Snakemake's records included)."""
    return planned_template.clone(tmp_path / "planned")


def edit_source(copy, module_path):
    path = copy.root / "src/lalm_slu" / module_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write("\n# edited\n")


def test_editing_budget_code_reruns_budgets_and_everything_downstream_only(planned):
    edit_source(planned, "data/budgets.py")
    summary = planned.summary()
    pending = {path for path, (_, _, plan) in summary.items() if plan == "update pending"}
    budgets = budget_outputs("en", "train", 0) | budget_outputs("en", "train", 10) | budget_outputs("en", "train", 50)
    # The cross-lingual curriculum's shared first phase reads the target's budget 0 (no target speech).
    budgets |= budget_outputs("en", "train", 100) | budget_outputs("de", "dev", "5shot") | budget_outputs("de", "dev", 0)
    runs = run_outputs(RUN_TEXT, "tiny-en") | run_outputs(RUN_B10, "tiny-en") | run_outputs(RUN_B50, "tiny-en")
    runs |= run_outputs(RUN_DE, "tiny-de") | prefix_outputs(PREFIX_DE)
    assert pending == budgets | runs | REPORT
    assert {summary[path][1] for path in budgets} == {"params changed"}


def test_editing_plotting_code_reruns_only_the_figures(planned):
    edit_source(planned, "commands/make_figures.py")
    assert planned.pending() == {"results/figures"}


def test_editing_speech_code_does_not_rerun_corpus_preparation_or_budgets(planned):
    edit_source(planned, "speech/synthesis.py")
    pending = planned.pending()
    assert not {p for p in pending if p.startswith(("results/manifests", "results/budgets"))}
    assert "results/speech/tiny/en/train.parquet" in pending
    assert f"results/runs/{RUN_DE}/model" in pending


def test_changing_one_budget_schedules_only_the_new_budget_and_its_runs(planned):
    config = micro_config()
    config["grid"]["monolingual"][0]["budgets"] = [10, 25]
    write_config(planned, config)
    run_b25 = "tiny-en_direct_mixing_b25_s0"
    assert planned.pending() == budget_outputs("en", "train", 25) | run_outputs(run_b25, "tiny-en") | REPORT


def test_adding_one_target_language_schedules_only_that_language(planned):
    config = micro_config()
    config["grid"]["crosslingual"][0]["targets"] = ["de", "fr"]
    write_config(planned, config)
    language = {f"results/manifests/tiny/fr/{split}.parquet" for split in ("train", "dev", "test")}
    language |= {f"results/speech/tiny/fr/{split}{suffix}" for split in ("dev", "test") for suffix in ("", ".parquet")}
    expected = language | budget_outputs("fr", "dev", "5shot") | run_outputs(RUN_FR, "tiny-fr") | REPORT
    expected |= budget_outputs("fr", "dev", 0) | prefix_outputs("tiny-en2fr_curriculum_phase1_s0")
    assert planned.pending() == expected


def test_changing_training_settings_reruns_training_but_not_data_stages(planned):
    config = micro_config()
    config["training"] = {"per_device_batch_size": 4}
    write_config(planned, config)
    pending = planned.pending()
    assert not {p for p in pending if p.startswith(("results/manifests", "results/speech", "results/budgets"))}
    assert not {p for p in pending if p.startswith("results/mixtures")}
    assert {f"results/runs/{run}/model" for run in (RUN_TEXT, RUN_B10, RUN_B50, RUN_DE)} <= pending


MASSIVE_INTENTS = [
    ("alarm_set", "wake me up at [time : seven am]"),
    ("weather_query", "will it rain in [place_name : paris]"),
    ("play_music", "play some [music_genre : jazz]"),
    ("iot_hue_lightoff", "turn the lights off"),
]


def write_massive_jsonl(path, locale, per_split):
    """A tiny corpus in MASSIVE's JSON-lines format."""
    lines = []
    for partition, count in per_split.items():
        for index in range(count):
            intent, annotated = MASSIVE_INTENTS[index % len(MASSIVE_INTENTS)]
            annotated = f"{annotated} please {partition} {index}"
            text = annotated.replace("[", "").replace("]", "")
            for slot in ("time : ", "place_name : ", "music_genre : "):
                text = text.replace(slot, "")
            record = {"id": f"{partition}{index}", "locale": locale, "partition": partition,
                      "scenario": intent.split("_")[0], "intent": intent, "utt": text, "annot_utt": annotated}  # fmt: skip
            lines.append(json.dumps(record))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_after_running_the_data_stages_one_changed_budget_reruns_only_its_dependents(workflow_copy):
    pytest.importorskip("lalm_slu.commands.prepare_corpus", reason="corpus readers not in this checkout")
    copy = workflow_copy
    for lang, locale in (("en", "en-US"), ("de", "de-DE"), ("fr", "fr-FR")):
        write_massive_jsonl(copy.root / f"data/tiny/{lang}.jsonl", locale, {"train": 30, "dev": 10, "test": 8})
    (copy.root / "models/demo").mkdir(parents=True)
    write_config(copy, micro_config())
    mixtures = [f"results/mixtures/{run}.parquet" for run in (RUN_TEXT, RUN_B10, RUN_B50, RUN_DE)]
    copy.snakemake(*mixtures)
    for path in mixtures:
        assert (copy.root / path).stat().st_size > 0
    stand_in_everything(copy)
    data_stage_outputs = {p for p in copy.summary() if not p.startswith(("results/runs", "results/mixtures"))} - REPORT
    config = micro_config()
    config["grid"]["monolingual"][0]["budgets"] = [10, 25]
    write_config(copy, config)
    pending = copy.pending()
    assert pending == budget_outputs("en", "train", 25) | run_outputs("tiny-en_direct_mixing_b25_s0", "tiny-en") | REPORT
    assert not pending & data_stage_outputs - budget_outputs("en", "train", 25)
    copy.snakemake("results/mixtures/tiny-en_direct_mixing_b25_s0.parquet")
    ids = (copy.root / "results/budgets/tiny/en/train/seed0/25.txt").read_text().split()
    smaller = (copy.root / "results/budgets/tiny/en/train/seed0/10.txt").read_text().split()
    assert len(ids) == 8 and set(smaller) <= set(ids)


def test_report_collects_metrics_tables_and_figures_with_captions(planned):
    (planned.root / "results/tables/intent_accuracy.csv").write_text("scheme,accuracy\ntext_only,0.5\n")
    (planned.root / "results/figures/intent_accuracy.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    planned.snakemake("--report", "report.html")
    report = (planned.root / "report.html").read_text(errors="replace")
    for name in ("metrics.csv", "comparisons.csv", "intent_accuracy.csv", "intent_accuracy.png"):
        assert name in report
    assert "against the speech budget" in report  # the figures caption
    assert "a comparison is paired" in report  # the comparisons caption


# Injected into a copy of the report: open Results > Figures, press the figure's eye icon, then list the
# decoded images. Snakemake's report is a single-page app, so only a browser shows whether figures render.
SHOW_FIGURE_SCRIPT = """<script>
const leaf = (text) => [...document.querySelectorAll("*")].filter((e) => !e.children.length && e.textContent.trim() === text);
setTimeout(() => {
  leaf("Figures").forEach((e) => e.click());
  setTimeout(() => {
    leaf("results/figures/FIGURE")[0].closest("tr").querySelector("a[iconname=eye]").click();
    setTimeout(() => {
      const shown = [...document.querySelectorAll("img")].filter((i) => i.src.startsWith("data:image/png"));
      const out = document.createElement("pre");
      out.id = "shown-figures";
      out.textContent = JSON.stringify(shown.map((i) => [i.naturalWidth, i.naturalHeight]));
      document.body.appendChild(out);
    }, 2000);
  }, 2000);
}, 2000);
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")
def test_report_shows_the_figures_in_headless_chromium(planned):
    import re
    import subprocess

    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from lalm_slu.report.loss_curves import loss_curves_figure

    figures = planned.root / "results/figures"
    pyplot.figure(figsize=(3.21, 1.23), dpi=100).savefig(figures / "intent_accuracy.png")
    # The loss curves as the figures command draws them: two seeds of one run, a dev curve on one.
    curves = pd.DataFrame([
        {"corpus": "tiny", "lang": "en", "scheme": "direct_mixing", "budget": "25", "seed": seed, "run": f"r{seed}",
         "curve": curve, "step": step, "loss": 2.0 / step + seed}
        for seed in (0, 1) for curve in ("train", "dev_text") for step in range(1, 6)
        if curve == "train" or seed == 1])
    loss_curves_figure(curves).savefig(figures / "loss_curves.png")
    planned.snakemake("--report", "report.html")
    html = (planned.root / "report.html").read_text(encoding="utf-8")
    end = html.rindex("</body>")
    for name in ("intent_accuracy.png", "loss_curves.png"):
        page = planned.root / f"clicked-{name}.html"
        page.write_text(html[:end] + SHOW_FIGURE_SCRIPT.replace("FIGURE", name) + html[end:], encoding="utf-8")
        dom = subprocess.run(
            [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--user-data-dir={planned.root / 'chromium-profile'}", "--virtual-time-budget=20000", "--dump-dom",
             page.as_uri()],
            capture_output=True, text=True, timeout=180,
        ).stdout  # fmt: skip
        shown = json.loads(re.search(r'<pre id="shown-figures">(.*?)</pre>', dom).group(1))
        height, width = matplotlib.image.imread(figures / name).shape[:2]
        assert shown == [[width, height]], name  # the PNG decoded at its own size: the browser drew the figure


def test_editing_comparison_code_reruns_the_comparisons_and_tables_only(planned):
    edit_source(planned, "report/comparisons.py")
    assert planned.pending() == {"results/comparisons.csv", "results/tables"}
