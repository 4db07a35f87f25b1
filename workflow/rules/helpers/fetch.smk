# The helpers of the rules in workflow/rules/fetch.smk, which alone use them (what two or more
# rule files use is in common.smk). Snakemake's linter wants rules and functions in separate files.

class Untracked:
    """A rule parameter that reaches the shell command (as its text) but not Snakemake's record
    of params, which keeps only plain values (strings, numbers, containers) and skips other
    objects: changing it reruns nothing. For a setting that no output depends on."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


TRUST_PICKLE = Untracked(f"--model-trust-pickle {CFG.model.trust_pickle}")


def custom_flag(wildcards):
    spec = CFG.data.custom.get(wildcards.task)
    return "" if spec is None else f"--custom {shlex.quote(json.dumps(spec.model_dump()))}"


def hf_flag(wildcards):
    spec = CFG.data.hf.get(wildcards.task)
    return "" if spec is None else f"--hf {shlex.quote(json.dumps(spec.model_dump()))}"
