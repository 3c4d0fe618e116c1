"""Site-wide endpoints outside the console and the API: `/favicon.ico`."""

from __future__ import annotations

from django.contrib.staticfiles import finders
from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> FileResponse:
    """Browsers ask for /favicon.ico on the first page; a 404 there is a console error."""
    path = finders.find("console/favicon.ico")
    if not path:
        raise Http404("favicon")
    return FileResponse(open(path, "rb"), content_type="image/x-icon")
