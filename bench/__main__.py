"""`python -m bench`: run every benchmark; each prints `bench: NAME VALUE UNIT target ... PASS|MISS`."""

from __future__ import annotations

from bench import daemon, scale, snp_launch_update, soak, update_data

BENCHES = [update_data.run, snp_launch_update.run, daemon.run, scale.run, soak.run]


def main() -> None:
    for bench in BENCHES:
        bench()


if __name__ == "__main__":
    main()
