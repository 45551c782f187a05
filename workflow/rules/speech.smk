# Speech manifests: the same rows as the text manifests, with audio. Which rule makes a
# corpus's speech follows corpora.<name>.speech (tts or recorded).


rule synthesize_speech:
    input:
        manifest=paths.manifest_path("{corpus}", "{lang}", "{split}"),
    output:
        manifest=paths.speech_manifest_path("{corpus}", "{lang}", "{split}"),
        audio=directory(paths.speech_audio_dir("{corpus}", "{lang}", "{split}")),
    log:
        "logs/synthesize_speech/{corpus}/{lang}/{split}.log",
    benchmark:
        paths.benchmark_path("synthesize_speech/{corpus}/{lang}/{split}")
    wildcard_constraints:
        corpus=alternatives(corpora_with_speech("tts")),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("synthesize_speech", "threads")
    resources:
        **job_resources("synthesize_speech"),
    params:
        voices=tts_voices_json,
        seed=config["speech"]["tts"]["seed"],
        chunk_size=config["speech"]["tts"]["chunk_size"],
        max_duration_s=config["speech"]["max_duration_s"],
        code=code_version("synthesize_speech"),
    shell:
        "python -m lalm_slu synthesize-speech --manifest {input.manifest:q}"
        " --out-manifest {output.manifest:q} --audio-dir {output.audio:q}"
        " --voices-json {params.voices:q} --seed {params.seed:q} --threads {threads}"
        " --chunk-size {params.chunk_size:q} --max-duration-s {params.max_duration_s:q}"
        " > {log:q} 2>&1"


rule ingest_audio:
    input:
        manifest=paths.manifest_path("{corpus}", "{lang}", "{split}"),
    output:
        manifest=paths.speech_manifest_path("{corpus}", "{lang}", "{split}"),
        audio=directory(paths.speech_audio_dir("{corpus}", "{lang}", "{split}")),
    log:
        "logs/ingest_audio/{corpus}/{lang}/{split}.log",
    benchmark:
        paths.benchmark_path("ingest_audio/{corpus}/{lang}/{split}")
    wildcard_constraints:
        corpus=alternatives(corpora_with_speech("recorded")),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("ingest_audio", "threads")
    resources:
        **job_resources("ingest_audio"),
    params:
        audio_root=corpus_setting("audio_root"),
        max_duration_s=config["speech"]["max_duration_s"],
        code=code_version("ingest_audio"),
    shell:
        "python -m lalm_slu ingest-audio --manifest {input.manifest:q}"
        " --audio-root {params.audio_root:q} --out-manifest {output.manifest:q}"
        " --audio-dir {output.audio:q} --max-duration-s {params.max_duration_s:q}"
        " --threads {threads} > {log:q} 2>&1"


# Word times of recorded speech, for interleaved training (synthesized speech has eSpeak NG's): a CTC acoustic model
# per language (alignment.models), fetched by the download stage, forced-aligns each transcript.
rule download_alignment_model:
    output:
        model=directory(paths.alignment_model_dir("{lang}")),
        stamp=paths.alignment_model_stamp("{lang}"),
    log:
        "logs/download_alignment_model/{lang}.log",
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    params:
        hub_id=alignment_model_setting("hub_id"),
        revision=alignment_model_setting("revision"),
    shell:
        "python -m lalm_slu download-model --hub-id {params.hub_id:q} --revision {params.revision:q}"
        " --out-dir {output.model:q} --stamp {output.stamp:q} > {log:q} 2>&1"


rule align_words:
    input:
        manifest=paths.speech_manifest_path("{corpus}", "{lang}", "{split}"),
        model=paths.alignment_model_dir("{lang}"),
    output:
        paths.aligned_manifest_path("{corpus}", "{lang}", "{split}"),
    log:
        "logs/align_words/{corpus}/{lang}/{split}.log",
    benchmark:
        paths.benchmark_path("align_words/{corpus}/{lang}/{split}")
    wildcard_constraints:
        corpus=alternatives(corpora_with_speech("recorded")),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        **job_resources("decode", gpu=True),
    params:
        settings=settings_json("alignment", "settings"),
        code=code_version("align_words"),
    shell:
        "HF_HUB_OFFLINE=1 python -m lalm_slu align-words --model {input.model:q} --manifest {input.manifest:q}"
        " --settings {params.settings:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
