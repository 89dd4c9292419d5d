"""The project's URLs plus `/bench/bare/`: the cheapest Django view that answers like the
ingest endpoint (a small JSON body, 202), the reference the ingest figures are divided by."""

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from project.urls import urlpatterns as project_urlpatterns


@csrf_exempt
def bare(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"success": True}, status=202)


urlpatterns = [path("bench/bare/", bare), *project_urlpatterns]
