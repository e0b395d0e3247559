"""The image tools' API (``/v1/tools/describe-image``, ``/v1/tools/generate_mask``): queued
tasks like generation, answered synchronously by default as FooocusAPI answers them."""
