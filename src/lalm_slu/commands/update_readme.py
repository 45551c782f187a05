"""Copy a demo table, the findings and a figure into the README's marked block (lalm_slu.report.readme_block):
the README shows pipeline output."""

from __future__ import annotations

from lalm_slu.report.readme_block import update_readme


def add_arguments(parser):
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--table", required=True, help="a Markdown table written by `lalm-slu tables`")
    parser.add_argument("--figure", required=True, help="a PNG written by `lalm-slu figures`")
    parser.add_argument("--findings", help="the findings table written by `lalm-slu tables --comparisons` (Markdown)")
    parser.add_argument("--assets-dir", default="docs/demo", help="where the README's copy of the figure goes")


def run(args):
    update_readme(args.readme, args.table, args.figure, args.findings, args.assets_dir)
