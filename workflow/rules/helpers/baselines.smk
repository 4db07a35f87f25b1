# The helpers of the rules in workflow/rules/baselines.smk, which alone use them (what two or more
# rule files use is in common.smk). Snakemake's linter wants rules and functions in separate files.

from pydantic import BaseModel


# The scores depend on the fine-tuned models (a replicate's own); inputs and heads are shared.
BASELINE_FILES = {
    "inputs": ("--inputs", "results/inputs/{task}.safetensors"),
    "head": ("--heads", "results/heads/{task}.safetensors"),
    "scores": ("--scores", "results{rep}/scores/{task}.parquet"),
}


def baseline_inputs(wildcards):
    """The per-task files the method's registry entry says it reads."""
    return [BASELINE_FILES[need][1].format(rep=wildcards.rep, task=t)
            for need in METHODS[wildcards.method].needs for t in TASKS]


def baseline_data_flags(wildcards):
    return " ".join(
        f"{BASELINE_FILES[need][0]} "
        + " ".join(f"{t}={BASELINE_FILES[need][1].format(rep=wildcards.rep, task=t)}" for t in TASKS)
        for need in METHODS[wildcards.method].needs
    )


def baseline_settings(wildcards):
    """Only the config sections the method reads, so that changing one method's settings
    reruns that method alone."""
    parts = []
    for section in METHODS[wildcards.method].sections:
        value = getattr(CFG.baselines, section)
        if isinstance(value, BaseModel):
            parts.append(render_flags(value, prefix=f"{section}_"))
        else:
            parts.append(f"--{section.replace('_', '-')} {value}")
    return " ".join(parts)
