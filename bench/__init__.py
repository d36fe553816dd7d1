"""Side-by-side benchmarks of nemovlm against its peers (issue 6). Run ``python -m bench``."""
