"""Multi-task reinforcement learning on environment settings (Meta-World): a shared soft actor-critic
(``mtlscope.rl.sac``), its loop with transference on the critic loss (``mtlscope.rl.loop``), the environments
(``mtlscope.rl.metaworld``) and the ``rl`` config section (``mtlscope.rl.config``)."""
