"""The metrics view's URL: ``path("django-ray/", include("django_ray.urls"))`` in a project."""

from __future__ import annotations

from django.urls import path

from django_ray import views

app_name = "django_ray"

urlpatterns = [path("metrics", views.metrics, name="metrics")]
