"""The paper configuration plans exactly the grid it describes.

`snakemake --dry-run` on workflow/configs/paper.yaml must plan, per rule, the number of jobs that
follows from the config's grid by the paper's design, counted here without the workflow's code:
one fine-tuning run per (seed, entry, scheme, budget) — text_only only at budget 0, oracle only
at 100 %, cross-lingual runs once per target and per with/without target text — each decoded and
scored once per test modality on its (target) language's test split.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from planning_time import PAPER_CONFIG, dry_run, scratch_workflow  # noqa: E402

pytestmark = pytest.mark.slow


def merged(base: dict, override: dict) -> dict:
    """Snakemake's --configfile semantics: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def paper_config() -> dict:
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    return merged(base, yaml.safe_load(PAPER_CONFIG.read_text()))


def budgets_of(scheme: str, budgets: list) -> list[str]:
    if scheme == "text_only":
        return ["0"]
    if scheme == "oracle":
        return ["100"]
    return [str(b) for b in budgets]


def expected_jobs(config: dict) -> dict[str, int]:
    """Jobs per rule implied by the grid (a fresh, forced plan: every job counted once). Curriculum's phase 1 holds
    no budgeted speech: it is trained once per seed and data (mixed from the 0 % budget) for all its budgets."""
    runs = 0
    phase_one_runs, evaluated_text_only, imitation_pools, aligned = set(), set(), set(), set()
    prefixes = set()
    languages, speech_sets, budget_files = set(), set(), set()
    # Evaluating on dev speech while training: the dev speech of each run's test language, unless it trains on it.
    dev_speech = "speech" in ((config["training"].get("dev_eval") or {}).get("inputs") or [])
    for seed in config["grid"]["seeds"]:
        for entry in config["grid"]["monolingual"]:
            corpus, lang = entry["corpus"], entry["lang"]
            split = entry.get("train_split", "train")
            languages.add((corpus, lang))
            speech_sets |= {(corpus, lang, split), (corpus, lang, "test")}
            if dev_speech and split != "dev":
                speech_sets.add((corpus, lang, "dev"))
            for scheme in entry["schemes"]:
                for budget in budgets_of(scheme, entry.get("budgets", [])):
                    runs += 1
                    budget_files.add((corpus, lang, split, seed, budget))
                    if scheme in ("behaviour_imitation", "mtbi"):
                        # Phase 1 is the text_only run; both schemes at one budget share one targets file.
                        phase_one_runs.add((corpus, lang, seed))
                        imitation_pools.add((corpus, lang, seed, budget))
                    if scheme in ("interleaving", "mtbi") and config["corpora"][corpus].get("speech") == "recorded":
                        aligned.add((corpus, lang, split))
                if scheme == "text_only":
                    evaluated_text_only.add((corpus, lang, seed))
                if scheme == "curriculum":
                    prefixes.add((corpus, lang, seed))
                    budget_files.add((corpus, lang, split, seed, "0"))
        for entry in config["grid"]["crosslingual"]:
            corpus, source = entry["corpus"], entry["source"]
            split = entry.get("target_text_split", "dev")
            with_and_without_text = len(entry.get("target_text", [True]))
            languages.add((corpus, source))
            speech_sets.add((corpus, source, "train"))
            budget_files.add((corpus, source, "train", seed, "100"))  # all source speech
            for target in entry["targets"]:
                languages.add((corpus, target))
                speech_sets |= {(corpus, target, split), (corpus, target, "test")}
                if dev_speech and split != "dev":
                    speech_sets.add((corpus, target, "dev"))
                for scheme in entry["schemes"]:
                    for budget in budgets_of(scheme, entry["target_speech_budgets"]):
                        runs += with_and_without_text
                        budget_files.add((corpus, target, split, seed, budget))
                        if scheme in ("behaviour_imitation", "mtbi"):
                            # Phase 1: a text-only run of source and target text, per target-text setting.
                            for text in entry.get("target_text", [True]):
                                phase_one_runs.add((corpus, source, target, seed, text))
                                imitation_pools.add((corpus, source, target, seed, text, budget))
                            budget_files |= {(corpus, source, "train", seed, "0"), (corpus, target, split, seed, "0")}
                        if scheme in ("interleaving", "mtbi") and config["corpora"][corpus].get("speech") == "recorded":
                            aligned |= {(corpus, source, "train"), (corpus, target, split)}
                    if scheme == "curriculum":
                        prefixes |= {(corpus, source, target, seed, text) for text in entry.get("target_text", [True])}
                        budget_files.add((corpus, target, split, seed, "0"))
    trained = runs + len(phase_one_runs - evaluated_text_only)  # phase-1 runs not in the grid: trained, not scored
    modalities = len(config["decode"]["modalities"])
    expected = {
        "prepare_corpus": len(languages),
        "subsample_budget": len(budget_files),
        "mix_training_set": trained,
        "finetune_model": trained,
        **({"mix_prefix_set": len(prefixes), "finetune_prefix": len(prefixes)} if prefixes else {}),
        "decode_test_set": runs,
        "score_predictions": runs * modalities,
        "aggregate_metrics": 1,
        "compare_schemes": 1,
        "make_tables": 1,
        "make_figures": 1,
        "all": 1,
    }
    speech_rule = {"tts": "synthesize_speech", "recorded": "ingest_audio"}
    for corpus, _, _ in speech_sets:
        rule = speech_rule[config["corpora"][corpus].get("speech", "tts")]
        expected[rule] = expected.get(rule, 0) + 1
    downloads = {corpus for corpus, _ in languages if config["corpora"][corpus].get("download")}
    if downloads:
        expected["download_corpus"] = len(downloads)
    release_texts = {corpus for corpus, _ in languages if config["corpora"][corpus].get("download_release_text")}
    if release_texts:
        expected["download_slurp_release"] = len(release_texts)
    if config["model"].get("hub_id"):
        expected["download_model"] = 1
    if imitation_pools:
        expected["imitation_targets"] = len(imitation_pools)
    if aligned:
        expected["align_words"] = len(aligned)
        expected["download_alignment_model"] = len({lang for _, lang, _ in aligned})
    if config["resources"]["finetune"].get("gpu", 0) >= 1 and config["resources"]["finetune"].get("gpu_memory_gb"):
        expected["plan_gpu_hours"] = 1  # a GPU grid's cost plan, in the report
    if "cascade" in config["decode"]["modalities"]:
        expected["transcribe_test_set"] = len({(corpus, lang) for corpus, lang, split in speech_sets if split == "test"})
    return expected


def test_paper_grid_plans_one_job_per_rule_and_grid_point(tmp_path):
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    planned, _seconds = dry_run(PAPER_CONFIG, cwd=workdir)
    assert planned == expected_jobs(paper_config())


def planned_jobs(workdir: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, {input, output, ..., shell}) of every job a plain dry run of the paper config plans."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--cores", "1", "--configfile", str(PAPER_CONFIG)],
        cwd=workdir, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr
    jobs = []
    for line in result.stdout.splitlines():
        if rule := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append((rule.group(1), {}))
        elif jobs and (field := re.match(r"    (\w+): (.*)$", line)):
            jobs[-1][1][field.group(1)] = field.group(2)
        elif jobs and line.startswith("Shell command: "):
            jobs[-1][1]["shell"] = line.removeprefix("Shell command: ")
    return jobs


def test_a_fresh_checkout_plans_the_model_download_and_every_fine_tuning_job_waits_for_it(tmp_path):
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    model = paper_config()["model"]["path"]
    assert not (workdir / model).exists()
    jobs = planned_jobs(workdir)
    (download,) = [fields for rule, fields in jobs if rule == "download_model"]
    assert download["output"].split(", ")[0] == model
    revision = paper_config()["model"]["revision"]
    assert f"download-model --hub-id Qwen/Qwen2-Audio-7B-Instruct --revision {revision}" in download["shell"]
    assert "--require-commit" in download["shell"]  # fine-tuning on GPUs: a branch is refused
    finetunes = [fields for rule, fields in jobs if rule == "finetune_model"]
    assert len(finetunes) == expected_jobs(paper_config())["finetune_model"]
    # Behaviour imitation's phase 2 starts from its text_only run's model, which waits for the download.
    phase_one = re.compile(r"results/runs/[^,]*_text_only_b0_s\d+/model")
    assert all(model in fields["input"].split(", ") or phase_one.search(fields["input"]) for fields in finetunes)


def test_mtbi_schemes_are_planned_for_slurp_italic_speech_massive_and_cross_lingual_transfer(tmp_path):
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    jobs = planned_jobs(workdir)
    finetuned = {fields["wildcards"].removeprefix("run=") for rule, fields in jobs if rule == "finetune_model"}
    for scheme in ("behaviour_imitation", "interleaving", "mtbi"):
        for data in ("slurp-en", "italic-it", "speechmassive-fr", "speechmassive-de", "speechmassive-fr2de"):
            assert any(run.startswith(f"{data}_{scheme}_") for run in finetuned), (data, scheme)
    for target in ("es", "vi"):
        assert any(run.startswith(f"speechmassive-fr2{target}_behaviour_imitation_") for run in finetuned)
    # Cross-lingual imitation targets come from a text-only phase 1 on source and target text.
    pools = [fields["wildcards"] for rule, fields in jobs if rule == "imitation_targets"]
    assert any("speechmassive-fr2de_text_only" in pool for pool in pools)


def test_paper_grid_has_every_scheme_seed_and_corpus_of_the_paper():
    config = paper_config()
    mono = {(e["corpus"], e["lang"]) for e in config["grid"]["monolingual"]}
    assert {("slurp", "en"), ("italic", "it"), ("speechmassive", "fr"), ("speechmassive", "de")} <= mono
    for entry in config["grid"]["monolingual"]:
        assert set(entry["schemes"]) == {"text_only", "direct_mixing", "curriculum", "oracle", "behaviour_imitation",
                                         "interleaving", "mtbi"}
    assert config["grid"]["seeds"] == [0, 1, 2]
    targets = {t for e in config["grid"]["crosslingual"] for t in e["targets"]}
    assert targets == {"de", "es", "vi"}


def test_speech_massive_jobs_read_their_locale_into_their_own_audio_folder(tmp_path):
    # Speech-MASSIVE's hub configs are locales (fr-FR), and its utterance ids repeat across locales.
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    targets = [f"results/manifests/speechmassive/{lang}/train.parquet" for lang in ("fr", "de", "vi")]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--cores", "1", *targets,
         "--configfile", str(PAPER_CONFIG)],
        cwd=workdir, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if "lalm_slu prepare-corpus" in line]
    assert len(commands) == 3
    for lang, locale in (("fr", "fr-FR"), ("de", "de-DE"), ("vi", "vi-VN")):
        (command,) = [c for c in commands if f"--lang {lang} " in c]
        assert f"config={locale}" in command
        assert "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu" in command  # compute jobs stay offline
        assert f"audio_dir=resources/audio/speechmassive/{lang} " in command + " "
    (download,) = [line for line in result.stdout.splitlines() if "lalm_slu download" in line and "speech_massive" in line]
    assert "--locales fr-FR de-DE es-ES vi-VN" in download


def test_each_fine_tuning_job_launches_one_process_per_gpu_its_plan_asks_and_projector_runs_ask_fewer(tmp_path):
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    finetunes = [fields for rule, fields in planned_jobs(workdir) if rule == "finetune_model"]
    assert finetunes
    asked = {}
    for fields in finetunes:
        gpus = int(re.search(r"\bgpu=(\d+)", fields["resources"]).group(1))
        assert 1 <= gpus <= paper_config()["resources"]["finetune"]["gpu"]
        launch = "python" if gpus == 1 else f"python -m torch.distributed.run --standalone --nproc-per-node {gpus}"
        assert f"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True {launch} -m lalm_slu finetune" in fields["shell"]
        assert "--signal" not in fields["resources"]  # the trainer stops before the time limit by itself
        scheme = re.search(r'"name": "(\w+)"', fields["shell"]).group(1)
        asked.setdefault(scheme, set()).add(gpus)
    assert asked["mtbi"] == asked["behaviour_imitation"] == {1}  # the projector alone fits one card
    assert asked["direct_mixing"] == {2}


def test_a_multi_node_fine_tuning_job_runs_one_torchrun_per_node_meeting_at_the_first(tmp_path):
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    (workdir / "two_nodes.yaml").write_text(yaml.safe_dump({"resources": {"finetune": {"nodes": 2}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds", "--cores", "1", "--configfile",
         str(PAPER_CONFIG), "two_nodes.yaml"],
        cwd=workdir, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert result.returncode == 0, result.stderr
    gpus = paper_config()["resources"]["finetune"]["gpu"]
    threads = paper_config()["resources"]["finetune"]["threads"]
    launch = (
        f"srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --cpus-per-task {gpus * threads} --kill-on-bad-exit 1"
        f" python -m torch.distributed.run --nnodes 2 --nproc-per-node {gpus} --rdzv-backend c10d"
        ' --rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$((20000 + SLURM_JOB_ID % 20000))"'
    )
    assert launch in result.stdout


def cluster_rules(workdir: Path) -> set[str]:
    """Rules whose jobs a cluster executor submits: those the workflow does not declare local (Snakemake's own list)."""
    code = (
        "from pathlib import Path\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings()) as api:\n"
        f"    flow = api.workflow(ResourceSettings(cores=1), ConfigSettings(configfiles=[Path({str(PAPER_CONFIG)!r})]),"
        " snakefile=Path('Snakefile'), workdir=Path('.'))._workflow\n"
        "    print(' '.join(r.name for r in flow.rules if r.name not in flow._localrules and not r.norun))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_only_gpu_jobs_and_corpus_preparation_are_submitted_to_the_cluster(tmp_path):
    """Scoring, mixing, budgets and the report run on the submit host: about one cluster job per GPU job."""
    workdir = scratch_workflow(tmp_path, PAPER_CONFIG)
    gpu_rules = {"finetune_model", "finetune_prefix", "decode_test_set", "transcribe_test_set", "imitation_targets",
                 "align_words", "encode_audio"}
    jobs, _ = dry_run(PAPER_CONFIG, workdir)
    submitted_rules = cluster_rules(workdir) & set(jobs)
    assert submitted_rules == (gpu_rules & set(jobs)) | {"prepare_corpus", "ingest_audio"}
    submissions = sum(count for rule, count in jobs.items() if rule in submitted_rules)
    gpu_jobs = sum(count for rule, count in jobs.items() if rule in gpu_rules)
    assert submissions <= 1.02 * gpu_jobs  # 1,279 submissions for 1,261 GPU jobs, not 3,644
