from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Fooocus API"
admin.site.site_title = "Fooocus API admin"

urlpatterns = [
    # Before admin.site.urls, whose catch-all would otherwise answer these paths.
    path("admin/queue/", include("generation.admin_urls")),
    path("admin/", admin.site.urls),
    path("", include("generation.compat.urls")),
    path("", include("generation.urls")),
]
