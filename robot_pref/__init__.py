"""robot_pref: robot offline RL from vision-language-model preference feedback."""

__version__ = "0.1.0"
