"""The jobs API the editor's queue and history panels read: /jobs listings, details and cancelling.

A job is a prompt in any state; the routes get the jobs service (async), the worker as a `Runner`
(cancelling the running job interrupts it) and the hub for the status broadcast that follows.
"""

from __future__ import annotations

from .endpoints import Endpoint
from .errors import NotFound, json_response
from .schemas import (CancelJobsBody, ErrorResponse, JobCancelled, JobDetail, JobsCancelled, JobsPage, JobsQuery,
                      parse, parse_query)
from .security import read_json
from .services import JobsService, Runner
from .views import job_detail, jobs_page
from .ws import Hub


class JobRoutes:
    def __init__(self, jobs: JobsService, runner: Runner, hub: Hub):
        self.jobs, self.runner, self.hub = jobs, runner, hub

    def endpoints(self) -> list[Endpoint]:
        missing = {404: ErrorResponse}
        return [
            Endpoint("GET", "/jobs", self.get_jobs, query=JobsQuery, response=JobsPage),
            Endpoint("POST", "/jobs/cancel", self.cancel_jobs, body=CancelJobsBody, response=JobsCancelled),
            Endpoint("GET", "/jobs/{job_id}", self.get_job, response=JobDetail, errors=missing),
            Endpoint("POST", "/jobs/{job_id}/cancel", self.cancel_job, response=JobCancelled, errors=missing),
        ]

    async def get_jobs(self, request):
        """One page of jobs, newest first unless told otherwise."""
        q = parse_query(JobsQuery, request.query)
        records, total = await self.jobs.jobs(q.status, q.sort_by, q.sort_order == "desc", q.limit, q.offset)
        return json_response(jobs_page(records, total, q.limit, q.offset))

    async def get_job(self, request):
        """A job with its workflow, outputs and status messages."""
        record = await self.jobs.get(request.match_info["job_id"])
        if record is None:
            raise NotFound("job not found")
        return json_response(job_detail(record))

    async def _cancel(self, job_id: str) -> bool:
        return await self.jobs.cancel_pending(job_id) or self.runner.interrupt(job_id)

    async def cancel_job(self, request):
        """Cancel a pending job, or interrupt it when it is running."""
        job_id = request.match_info["job_id"]
        if await self.jobs.get(job_id) is None:
            raise NotFound("job not found")
        cancelled = await self._cancel(job_id)
        await self.hub.broadcast_status()
        return json_response({"id": job_id, "cancelled": cancelled})

    async def cancel_jobs(self, request):
        """Cancel several jobs; answers the ones that were cancelled."""
        body = await read_json(request)
        ids = parse(CancelJobsBody, body if isinstance(body, dict) else {}).job_ids
        cancelled = [i for i in ids if await self._cancel(i)]
        await self.hub.broadcast_status()
        return json_response({"cancelled": cancelled})
