"""One function per pipeline stage, files in and files out, named as its Snakemake rule and its
`python -m calm` command. The CLI and the rules call these and nothing else; each writes its
outputs atomically. One module per part of the pipeline:

- `data`: fetch_model, fetch_finetuned, fetch_data, prepare
- `finetune`: finetune
- `selection`: score, select
- `merge_calm`: calm_base, calm_step, calm_model
- `baselines`: merge_baseline, and the adapters that feed the data-driven methods their data
- `evaluation`: evaluate, evaluate_task_arithmetic, table
- `ablations`: mask_parts, ablation_topk, ablation_table
- `family`: what they share: opening the model family, task vectors, test predictions
"""
