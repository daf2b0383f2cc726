"""Host code for `xl-sev`: the toolstack (stock `xl`), the launch flow, the local owner, host checks.

Used by the CLI (sevd.cli.xl_sev), which only parses arguments and prints; nothing here imports click.
"""
