"""The labeling page (`robot-pref label-ui`): people answer a hybrid run's human queue in a browser.

`app` is the FastAPI app and its entry point, `session` who gets which pair (leases, overlap, undo);
``static/`` holds the page (plain HTML/JS/CSS, no build step).
"""
