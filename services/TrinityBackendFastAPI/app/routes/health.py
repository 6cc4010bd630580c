"""GET /healthz: 200 when Redis (broker and result backend) answers PING quickly, else 503.
GET /livez: 200 while the process serves requests, touching nothing else (liveness)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.celery_app import celery_app
from config.celery_settings import broker_ping

router = APIRouter()


@router.get("/healthz")
def healthz() -> JSONResponse:  # sync: FastAPI runs it in its threadpool
    urls = {"broker": celery_app.conf.broker_url}
    if celery_app.conf.result_backend != celery_app.conf.broker_url:
        urls["result_backend"] = celery_app.conf.result_backend
    checks = {}
    for name, url in urls.items():
        try:
            broker_ping(url, timeout=1.0)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {exc}"
    failing = [name for name, value in checks.items() if value != "ok"]
    if failing:
        return JSONResponse({"status": "error", "failing": failing, "checks": checks},
                            status_code=503)
    return JSONResponse({"status": "ok", "checks": checks})


@router.get("/livez")
async def livez() -> dict:
    return {"status": "alive"}
