"""Routes of the queue dashboard under /admin/queues/."""

from django.urls import path

from queueadmin import views

app_name = "queueadmin"

urlpatterns = [
    path("", views.dashboard, name="queueadmin_dashboard"),
    path("pause/", views.queues_pause, {"paused": True}, name="queueadmin_pause"),
    path("resume/", views.queues_pause, {"paused": False}, name="queueadmin_resume"),
    path("queue/<str:queue>/clean/", views.queue_clean, name="queueadmin_queue_clean"),
    path("queue/<str:queue>/<str:state>/", views.job_list, name="queueadmin_job_list"),
    path("jobs/<str:job_id>/", views.job_detail, name="queueadmin_job_detail"),
    path("jobs/<str:job_id>/<str:action>/", views.job_action, name="queueadmin_job_action"),
]
