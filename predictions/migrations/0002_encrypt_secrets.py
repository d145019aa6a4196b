"""Encrypt the secrets already stored in chatflows' flowData and predictions' overrideConfig."""

from django.db import migrations


def _each(model, fields):
    return model.objects.only("pk", *fields).iterator(chunk_size=500)


def encrypt(apps, schema_editor):
    from predictions import secrets

    Chatflow = apps.get_model("predictions", "Chatflow")
    Prediction = apps.get_model("predictions", "Prediction")
    for chatflow in _each(Chatflow, ["flow_data"]):
        new = secrets.flow_data_encrypt(chatflow.flow_data)
        if new != chatflow.flow_data:
            # update(): keep updated_at, which is part of the parsed-flow cache key.
            Chatflow.objects.filter(pk=chatflow.pk).update(flow_data=new)
    for prediction in _each(Prediction, ["request"]):
        request = prediction.request if isinstance(prediction.request, dict) else {}
        override = request.get("overrideConfig")
        if not override:
            continue
        new = secrets.encrypt_secrets(override)
        if new is not override:
            Prediction.objects.filter(pk=prediction.pk).update(
                request={**request, "overrideConfig": new}
            )


def decrypt(apps, schema_editor):
    from predictions import secrets

    Chatflow = apps.get_model("predictions", "Chatflow")
    Prediction = apps.get_model("predictions", "Prediction")
    for chatflow in _each(Chatflow, ["flow_data"]):
        new = secrets.flow_data_decrypt(chatflow.flow_data)
        if new != chatflow.flow_data:
            Chatflow.objects.filter(pk=chatflow.pk).update(flow_data=new)
    for prediction in _each(Prediction, ["request"]):
        request = prediction.request if isinstance(prediction.request, dict) else {}
        override = request.get("overrideConfig")
        if not override:
            continue
        new = secrets.decrypt_secrets(override)
        if new is not override:
            Prediction.objects.filter(pk=prediction.pk).update(
                request={**request, "overrideConfig": new}
            )


class Migration(migrations.Migration):
    dependencies = [("predictions", "0001_initial")]

    operations = [migrations.RunPython(encrypt, decrypt, elidable=True)]
