"""The image tools beside generation: describe an image, generate a mask (reference fooocusapi
§1.3-1.4). :mod:`engine.tools.types` (the requests and option names) imports without torch; the
models live in :mod:`engine.tools.describe`, :mod:`engine.tools.segment` and
:mod:`engine.tools.sam`, held loaded by :class:`engine.tools.models.ToolModels`."""
