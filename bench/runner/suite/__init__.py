"""The runner benchmark's parts; ``bench/runner/run.py`` is the program.

* ``workload``: the prompts every arm gets and what is measured of each answer;
* ``servers``: the processes under test (the runner, ``mlx_lm.server``) and their drivers;
* ``smollm2``: the headline, SmolLM2-135M-Instruct on runner (cpu), runner (mlx) and
  ``mlx_lm.server``;
* ``demo``: the demo models on the mlx backend versus mlx-lm in-process and its server, and
  the investigation of the gap between the two;
* ``report``: ``RESULTS.md``.
"""
