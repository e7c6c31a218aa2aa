"""The service (`ppsvd serve`): a warm pipeline behind OpenAI's videos API, with a durable job queue.

client --HTTP--> app.py (Starlette, in the launcher process) --> service.py
    POST /v1/videos: image file + job row committed (jobs.py, SQLite WAL) before the id returns
pipeline.py: the supervisor keeps the workers running (elastic launcher, restarts after a
    crash), the feeder hands queued jobs to free replicas, the monitor turns the stages'
    events and lanes into job states (state.py) and completions in the job store.
The stages' side is runtime/jobfeed.py.
"""
