"""CLI commands that run one stage outside a plan (export, bench, eval, compare); cli.py and cli_eval.py parse, these run."""
