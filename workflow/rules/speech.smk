# Speech manifests: the same rows as the text manifests, with audio. Which rule makes a
# corpus's speech follows corpora.<name>.speech (tts or recorded).


rule synthesize_speech:
    input:
        manifest="results/manifests/{corpus}/{lang}/{split}.parquet",
    output:
        manifest="results/speech/{corpus}/{lang}/{split}.parquet",
        audio=directory("results/speech/{corpus}/{lang}/{split}"),
    log:
        "logs/synthesize_speech/{corpus}/{lang}/{split}.log",
    benchmark:
        "results/benchmarks/synthesize_speech/{corpus}/{lang}/{split}.tsv"
    wildcard_constraints:
        corpus=alternatives(corpora_with_speech("tts")),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("synthesize_speech", "threads")
    resources:
        mem_mb=resource("synthesize_speech", "mem_mb"),
        runtime=resource("synthesize_speech", "runtime"),
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
        manifest="results/manifests/{corpus}/{lang}/{split}.parquet",
    output:
        manifest="results/speech/{corpus}/{lang}/{split}.parquet",
        audio=directory("results/speech/{corpus}/{lang}/{split}"),
    log:
        "logs/ingest_audio/{corpus}/{lang}/{split}.log",
    benchmark:
        "results/benchmarks/ingest_audio/{corpus}/{lang}/{split}.tsv"
    wildcard_constraints:
        corpus=alternatives(corpora_with_speech("recorded")),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("ingest_audio", "threads")
    resources:
        mem_mb=resource("ingest_audio", "mem_mb"),
        runtime=resource("ingest_audio", "runtime"),
    params:
        audio_root=corpus_setting("audio_root"),
        max_duration_s=config["speech"]["max_duration_s"],
        code=code_version("ingest_audio"),
    shell:
        "python -m lalm_slu ingest-audio --manifest {input.manifest:q}"
        " --audio-root {params.audio_root:q} --out-manifest {output.manifest:q}"
        " --audio-dir {output.audio:q} --max-duration-s {params.max_duration_s:q}"
        " --threads {threads} > {log:q} 2>&1"
