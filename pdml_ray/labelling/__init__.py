"""Where to click next, and the labelling tools' file formats (pure: numpy and torch).

The labelling loop (``jobs.suggest``, then a labelling tool, then ``jobs.prepare_points
--import``) reads its pieces from here:

- ``uncertainty``: how unsure the model is at a pixel (top-2 margin, entropy);
- ``coverage``: how far a pixel's embedding lies from every labelled point of its
  predicted class;
- ``clicks``: the discount near clicks an image already has;
- ``candidates``: the best pixels of each predicted region;
- ``scoring``: one image scored at the working resolution, down to its candidates;
- ``spread``: the budget spread over regions and images;
- ``suggestions``: the picks, and their CSV;
- ``pictures``: overlays with numbered suggestions, the score histogram;
- ``label_studio``, ``cvat``, ``tool_clicks``, ``tool_import``: the labelling tools'
  files, and imports told apart by content.

Submodules are imported where they are used (this file imports none of them):
``jobs.prepare_points --import`` reads ``tool_import`` without pulling in the model.
"""
