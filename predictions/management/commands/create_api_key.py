"""Create an API key and print it once."""

from django.core.management.base import BaseCommand, CommandError

from predictions import selectors, services


class Command(BaseCommand):
    help = "Create an API key (printed once); optionally bind it to a chatflow or allow management."

    def add_arguments(self, parser):
        parser.add_argument("name", type=str, help="A name to recognise the key by.")
        parser.add_argument("--manage", action="store_true", help="Allow the management API.")
        parser.add_argument("--chatflow", type=str, help="Bind the key to this chatflow id.")

    def handle(self, *args, **options):
        chatflow = None
        if options["chatflow"]:
            chatflow = selectors.chatflow_get(options["chatflow"])  # None for a malformed id too
            if chatflow is None:
                raise CommandError(f"Chatflow {options['chatflow']} not found; list them in admin.")
        key, raw = services.apikey_create(name=options["name"], can_manage=options["manage"])
        if chatflow is not None:
            services.chatflow_update(chatflow=chatflow, api_key=key)
        self.stdout.write(raw)
        self.stdout.write(self.style.SUCCESS(f"created API key {key.name} ({key.prefix}…)"))
