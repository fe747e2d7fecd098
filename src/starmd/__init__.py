"""starmd: STAR-MD (Shoghi et al., ICLR 2026) as a reproducible Snakemake pipeline."""

__version__ = "0.1.0"
