"""The older Fooocus-API's routes (``/v1/generation/*``, ``/v2/generation/*``, ``query-job``,
``job-queue``, ``job-history``, ``stop``, ``clean_vram``, ``/files``) on the same server.

Its requests are translated to FooocusAPI's flat generate body (``fields`` holds the one name
table) and queued through ``generation.submit`` like any other task; its responses are built from
the task rows (``presenters``). Nothing here keeps state of its own, so every web process of a
cluster answers for every job.
"""
