// Dutch and English for every string the pages show.
//
// Static text sits in the HTML with `data-i18n="key"` (text content) and
// `data-i18n-attr="attr:key;attr2:key2"` (attributes); text built in code
// uses `t(key, params)`. The language comes from navigator.languages
// (nl* → Dutch, else English) and `#lang-switch` toggles it; the choice is
// not stored anywhere (no cookies, no storage).
//
// Patient-facing text is plain language (B1): short sentences, say what to do.

const nl = {
  'page.title': 'Spreekkamer – videoconsult',
  'brand': 'Spreekkamer',
  'skip': 'Naar de inhoud',
  'lang.switch': 'English',
  'lang.switchLabel': 'Switch to English',

  'landing.pageTitle': 'Spreekkamer – videoconsult',
  'landing.title': 'Videoconsult met uw zorgverlener',
  'landing.open': 'Open de link die uw zorgverlener u heeft gestuurd, bijvoorbeeld in uw afspraakbericht of e-mail.',
  'landing.noAccount': 'U hoeft niets te installeren en geen account te maken.',
  'landing.devices': 'U heeft een camera en microfoon nodig, bijvoorbeeld op uw telefoon, tablet of laptop.',
  'landing.help': 'Werkt de link niet? Neem contact op met uw zorgverlener en vraag om een nieuwe link.',

  'preview.title': 'Controleer uw camera en microfoon',
  'preview.greeting': 'Hallo {name}. U doet mee als {role}.',
  'self.label': 'U',
  'self.cameraOff': 'Uw camera staat uit',
  'self.micOff': 'microfoon uit',
  'devices.title': 'Camera en microfoon',
  'devices.camera': 'Camera',
  'devices.mic': 'Microfoon',
  'devices.speaker': 'Luidspreker',
  'devices.level': 'Geluid van uw microfoon',
  'devices.levelHint': 'Zeg iets. Als de balk beweegt, horen wij u.',
  'devices.testSound': 'Testgeluid afspelen',
  'devices.none': 'Niet gevonden',
  'devices.cameraN': 'Camera {n}',
  'devices.micN': 'Microfoon {n}',
  'devices.speakerN': 'Luidspreker {n}',
  'media.retry': 'Camera en microfoon opnieuw proberen',
  'connectivity.title': 'Verbinding met de videoserver',
  'connectivity.checking': 'We testen de verbinding met de videoserver…',
  'connectivity.udp': 'De verbinding werkt.',
  'connectivity.tcp': 'De verbinding werkt, via een langzamere route. Beeld en geluid kunnen iets vertragen.',
  'connectivity.relay': 'De verbinding werkt, via een omweg: uw netwerk laat geen directe verbinding toe. Beeld en geluid kunnen iets vertragen.',
  'connectivity.failed': 'Er is geen verbinding met de videoserver. Controleer uw internetverbinding. Op het netwerk van uw werk? Vraag uw IT-afdeling om {ports} open te zetten.',
  'connectivity.failedNoPorts': 'Er is geen verbinding met de videoserver. Controleer uw internetverbinding en probeer het opnieuw.',
  'connectivity.ports': 'UDP-poort {udp} en TCP-poort {tcp}',
  'connectivity.portsUdp': 'UDP-poort {udp}',
  'connectivity.portsTcp': 'TCP-poort {tcp}',
  'connectivity.unknown': 'We konden de verbinding nu niet testen. U kunt wel gewoon deelnemen.',
  'connectivity.skipped': 'De verbindingstest is gestopt omdat u deelneemt.',
  'connectivity.again': 'Verbinding opnieuw testen',

  'privacy.title': 'Uw privacy',
  'privacy.who': 'Alleen de mensen in dit consult zien en horen u.',
  'privacy.noRecording': "Er wordt niets opgenomen. Beeld, geluid, chat en foto's worden nergens bewaard.",
  'privacy.e2eeOn': 'Het gesprek is end-to-end versleuteld: alleen de deelnemers kunnen het zien en horen. Ook onze server niet.',
  'privacy.e2eeOff': 'Uw browser kan dit gesprek niet end-to-end versleutelen. De verbinding is wel beveiligd. Uw zorgverlener ziet dit en moet ermee akkoord gaan.',
  'privacy.linkUnusable': 'Uw link mist een deel van de beveiligingscode. De zorgverlener moet u daarom eerst bevestigen.',
  'privacy.log': 'De wet verplicht ons bij te houden wie wanneer meedeed (een toegangslog). Wat er gezegd of getoond wordt, staat daar nooit in.',
  'privacy.place': 'Zoek een rustige plek waar niemand kan meeluisteren.',
  'privacy.waitingNoMedia': 'In de wachtkamer ziet en hoort niemand u.',

  'clinician.checkTitle': 'Voordat u begint',
  'clinician.checkIdentity': 'Controleer wie de patiënt is: vraag naar naam en geboortedatum.',
  'clinician.checkFree': 'Vraag of de patiënt vrijuit kan praten en of er iemand meekijkt of meeluistert.',
  'clinician.checkNothingStored': "Vertel dat er niets wordt opgenomen en dat chat en foto's na het gesprek weg zijn.",
  'clinician.checkPhotos': 'Deel alleen foto\'s als dat helpt bij de zorg. Bewaart u een foto, zet die dan in het dossier en verwijder hem daarna van uw apparaat.',

  'consent.text': 'Als u op ‘Deelnemen aan het consult’ drukt, gaat u akkoord met het gesprek zoals hierboven beschreven.',
  'join.button': 'Deelnemen aan het consult',
  'joining.title': 'Verbinden…',
  'joining.text': 'Een moment geduld. We maken verbinding.',

  'waiting.title': 'U bent in de wachtkamer',
  'waiting.text': 'Uw zorgverlener laat u zo binnen. U hoeft niets te doen. Laat dit venster open.',
  'waiting.leave': 'Wachtkamer verlaten',

  'call.title': 'Videoconsult',
  'call.alone': 'U bent nu nog alleen in het consult. De anderen komen zo.',
  'call.sidePanel': 'Wachtkamer en chat',
  'call.controls': 'Bediening van het gesprek',
  'control.mute': 'Microfoon uit',
  'control.cameraOff': 'Camera uit',
  'control.audioOnly': 'Alleen geluid',
  'audioOnly.note': 'U ziet de anderen nu niet, u hoort ze alleen. Dat helpt als de verbinding traag is. De anderen zien u nog wel. Druk nog een keer op ‘Alleen geluid’ om de anderen weer te zien.',
  'control.leave': 'Gesprek verlaten',
  'control.devices': 'Camera en microfoon kiezen',

  'role.clinician': 'zorgverlener',
  'role.patient': 'patiënt',
  'role.guest': 'gast',

  'tile.micOff': 'Microfoon staat uit',
  'tile.camOff': 'Camera staat uit',
  'tile.speaking': 'spreekt',

  'trust.verified': 'Geverifieerd',
  'trust.linkBound': 'Beveiligd met de link',
  'trust.encrypted': 'Versleuteld, nog niet gecontroleerd',
  'trust.pending': 'Beveiliging wordt ingesteld…',
  'trust.needsDecision': 'Wacht op de zorgverlener',
  'trust.needsDecisionHost': 'Wacht op uw beslissing',
  'trust.unencrypted': 'Niet versleuteld',
  'trust.failed': 'Niet veilig',
  'decision.hostText': '{name} heeft niet dezelfde beveiligde link als u, of de server heeft dat veranderd. Daarom krijgt {name} uw beeld en geluid nog niet. Kent u deze persoon en verwacht u hem of haar? Laat dan toe. Twijfelt u? Vergelijk eerst de veiligheidscode.',
  'decision.accept': 'Toelaten zonder linkcontrole',
  'decision.reject': 'Niet toelaten',
  'decision.peerText': 'De zorgverlener moet {name} eerst bevestigen. Tot dan krijgt {name} uw beeld en geluid niet.',
  'e2ee.failedText': 'De beveiliging met {name} klopt niet. {name} krijgt uw beeld en geluid niet. Vertel dit aan de zorgverlener.',
  'e2ee.refused': 'Iemand die niet in dit consult staat, probeerde mee te kijken. Dat is geweigerd: die persoon ziet en hoort niets.',
  'e2ee.safetyLabel': 'Veiligheidscode met {name}. Lees deze code hardop voor en vergelijk hem. Is hij bij u allebei hetzelfde? Dan praat u echt met elkaar.',
  'e2ee.verifyButton': 'De codes zijn hetzelfde',
  'e2ee.verifiedButton': 'Gecontroleerd: de codes zijn hetzelfde',
  'e2ee.hostAccept': 'Het beeld en geluid van {name} zijn niet end-to-end versleuteld (hun browser kan dat niet). De verbinding is wel beveiligd, maar de server zou kunnen meekijken. Ga alleen verder als u dit accepteert.',
  'e2ee.acceptButton': 'Accepteren en doorgaan',
  'e2ee.peerNone': 'Het gesprek met {name} is niet end-to-end versleuteld.',
  'e2ee.selfNone': 'Uw browser kan dit gesprek niet end-to-end versleutelen. De verbinding is wel beveiligd, maar de server zou beeld en geluid kunnen zien. Uw zorgverlener moet hiermee akkoord gaan. Gebruik voor volledige bescherming een recente versie van Chrome, Edge, Firefox of Safari.',
  'summary.alone': 'End-to-end versleuteld',
  'summary.verified': 'Iedereen geverifieerd',
  'summary.linkBound': 'Beveiligd met de link',
  'summary.encrypted': 'Versleuteld, nog niet gecontroleerd',
  'summary.pending': 'Beveiliging wordt ingesteld…',
  'summary.needsDecision': 'Wacht op de zorgverlener',
  'summary.needsDecisionHost': 'Wacht op uw beslissing',
  'summary.unencrypted': 'Niet iedereen is versleuteld',
  'summary.selfNone': 'Niet versleuteld',
  'summary.failed': 'Niet veilig: kijk wie er meedoet',

  'chat.title': 'Chat',
  'chat.notSaved': 'De chat wordt niet bewaard. Na het gesprek is alles weg.',
  'chat.unavailable': "Chat en foto's werken alleen als het gesprek end-to-end versleuteld is.",
  'chat.label': 'Bericht',
  'chat.send': 'Versturen',
  'chat.photo': 'Foto delen',
  'chat.you': 'U',
  'chat.unknown': 'Iemand',
  'chat.photoAlt': 'Foto van {name}',
  'chat.savePhoto': 'Foto opslaan op dit apparaat',
  'chat.failed': 'Het bericht is niet verstuurd. Probeer het nog eens.',
  'chat.photoSending': 'Foto wordt verstuurd…',
  'chat.photoSent': 'Foto verstuurd.',
  'chat.photo_too_large': 'Deze foto is te groot. Kies een kleinere foto.',
  'chat.photo_unreadable': 'Deze foto kan niet worden geopend. Kies een andere foto (bijvoorbeeld JPG of PNG).',
  'chat.photo_failed': 'De foto is niet verstuurd. Probeer het nog eens.',

  'lobby.title': 'Wachtkamer',
  'lobby.empty': 'Er wacht niemand.',
  'lobby.reminder': 'Na het binnenlaten: controleer naam en geboortedatum, en vraag of de patiënt vrijuit kan praten.',
  'lobby.since': 'Wacht sinds {time}',
  'lobby.admit': '{name} binnenlaten',
  'lobby.deny': '{name} weigeren',
  'host.lock': 'Consult op slot doen',
  'host.locked': 'Het consult zit op slot: er kan niemand nieuw bij.',
  'host.end': 'Consult beëindigen voor iedereen',
  'host.remove': '{name} uit het consult verwijderen',

  'invite.title': 'Iemand uitnodigen',
  'invite.role': 'Rol',
  'invite.name': 'Naam (niet verplicht)',
  'invite.create': 'Uitnodigingslink maken',
  'invite.link': 'Link om te versturen',
  'invite.copy': 'Link kopiëren',
  'invite.copied': 'De link is gekopieerd.',
  'invite.nameHint': 'Wie de link heeft, kan deze naam lezen. Laat het veld liever leeg.',
  'invite.revoke': 'Deze link intrekken',
  'invite.revoked': 'De link is ingetrokken. Hij werkt niet meer.',
  'invite.secretFailed': 'De link kon niet worden beveiligd. Probeer het opnieuw.',
  'invite.expires': 'Geldig tot {time}',
  'invite.copyManual': 'Kopiëren lukte niet. De link is geselecteerd: kopieer hem met Ctrl+C (of Cmd+C).',

  'left.title': 'U heeft het consult verlaten',
  'left.text': 'U kunt dit venster nu sluiten.',
  'left.rejoin': 'Toch weer deelnemen',

  'notice.joined': '{name} doet mee.',
  'notice.left': '{name} heeft het consult verlaten.',
  'notice.removed': '{name} is uit het consult verwijderd.',
  'notice.waiting': '{name} zit in de wachtkamer.',
  'notice.reconnecting': 'Verbinding wordt hersteld… U hoeft niets te doen.',
  'notice.mediaReconnecting': 'Beeld en geluid zijn even weg. We herstellen de verbinding…',

  'mediaHelp.chrome': 'Klik bovenin op het camera-icoon in de adresbalk (naast het webadres). Kies ‘Altijd toestaan’ en druk daarna op ‘Camera en microfoon opnieuw proberen’.',
  'mediaHelp.firefox': 'Klik links van het webadres op het camera-icoon. Haal de blokkering weg en druk daarna op ‘Camera en microfoon opnieuw proberen’.',
  'mediaHelp.safari': 'Op een Mac: kies in het menu Safari > Instellingen voor deze website en zet Camera en Microfoon op ‘Sta toe’. Op iPhone of iPad: tik op ‘aA’ in de adresbalk, dan Website-instellingen. Druk daarna op ‘Camera en microfoon opnieuw proberen’.',
  'mediaHelp.other': 'Geef deze website toestemming voor uw camera en microfoon in de instellingen van uw browser. Druk daarna op ‘Camera en microfoon opnieuw proberen’.',
  'mediaHelp.inUse': 'Uw camera of microfoon wordt al door een ander programma gebruikt. Sluit dat programma (bijvoorbeeld een ander videogesprek) en probeer het opnieuw.',
  'mediaHelp.notFound': 'Er is geen camera of microfoon gevonden. Sluit er een aan of gebruik een ander apparaat.',

  'error.retry': 'Opnieuw proberen',
  'errorTitle.default': 'Dit lukte niet',
  'errorTitle.link': 'Deze link werkt niet',
  'errorTitle.media_denied': 'Geen toegang tot camera of microfoon',
  'errorTitle.media_unavailable': 'Camera of microfoon werkt niet',
  'errorTitle.connection_lost': 'Geen verbinding',
  'errorTitle.consult_ended': 'Het consult is afgelopen',
  'errorTitle.removed': 'U bent uit het consult gehaald',
  'errorTitle.replaced': 'Geopend in een ander venster',
  'error.replaced': 'U heeft het consult in een ander venster of op een ander apparaat geopend. Daar gaat het gesprek verder. U kunt dit venster sluiten.',
  'error.unknown': 'Er ging iets mis (code {code}). Probeer de link nog eens te openen. Lukt het niet? Neem contact op met uw zorgverlener.',
  'error.no_token': 'Deze link is niet compleet. Open de link uit uw bericht opnieuw, of vraag uw zorgverlener om een nieuwe link.',
  'error.media_denied': 'De website mag uw camera of microfoon niet gebruiken. U kunt wel deelnemen: dan ziet of hoort de ander u niet.',
  'error.media_unavailable': 'Uw camera of microfoon werkt niet. U kunt wel deelnemen: dan ziet of hoort de ander u niet.',
  'error.browser_unsupported': 'Deze browser kan geen videogesprek voeren. Gebruik een recente versie van Chrome, Edge, Firefox of Safari.',
  'error.connection_lost': 'Het is vijf minuten niet gelukt de verbinding met het consult te herstellen. Controleer uw internetverbinding en druk op ‘Opnieuw proberen’. Lukt het dan niet, open uw link opnieuw of bel de praktijk.',
  'error.removed': 'De zorgverlener heeft u uit het consult gehaald. Heeft u vragen? Neem contact op met uw zorgverlener.',
  'error.denied': 'U bent niet binnengelaten. Neem contact op met uw zorgverlener als u denkt dat dit niet klopt.',
  'error.bad_message': 'Er ging iets mis bij het versturen. Probeer het nog eens.',
  'error.unsupported_version': 'Deze pagina is verouderd. Laad de pagina opnieuw via de link uit uw bericht.',
  'error.not_joined': 'De verbinding is niet goed gestart. Open de link uit uw bericht opnieuw.',
  'error.join_timeout': 'Het verbinden duurde te lang. Open de link uit uw bericht opnieuw.',
  'error.message_too_large': 'Er werd te veel tegelijk verstuurd. Open de link uit uw bericht opnieuw.',
  'error.rate_limited': 'Even rustig aan: er wordt te veel tegelijk verstuurd. Wacht een paar seconden.',
  'error.token_missing': 'Deze link is niet compleet. Open de link uit uw bericht opnieuw, of vraag uw zorgverlener om een nieuwe link.',
  'error.token_too_large': 'Deze link klopt niet. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_malformed': 'Deze link klopt niet of is niet helemaal gekopieerd. Open de link uit uw bericht opnieuw, of vraag uw zorgverlener om een nieuwe link.',
  'error.token_bad_algorithm': 'Deze link is niet geldig. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_bad_signature': 'Deze link is niet geldig. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_expired': 'Deze link is verlopen. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_not_yet_valid': 'Deze link werkt nog niet. Probeer het later opnieuw, vlak voor uw afspraak. Klopt de klok van uw apparaat?',
  'error.token_wrong_issuer': 'Deze link is niet voor deze website. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_wrong_audience': 'Deze link is niet voor deze website. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_missing_claim': 'Deze link is niet compleet. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_bad_claim': 'Deze link klopt niet. Vraag uw zorgverlener om een nieuwe link.',
  'error.token_revoked': 'Deze link werkt niet meer. Vraag uw zorgverlener om een nieuwe link.',
  'error.consult_full': 'Dit consult zit vol. Er kunnen niet meer mensen bij. Neem contact op met uw zorgverlener.',
  'error.consult_locked': 'Dit consult is op slot gedaan. Er kan niemand meer bij. Neem contact op met uw zorgverlener.',
  'error.consult_ended': 'Dit consult is afgelopen. U kunt dit venster sluiten.',
  'error.forbidden': 'Dat mag alleen de zorgverlener doen.',
  'error.unknown_participant': 'Die persoon is niet (meer) in het consult.',
  'error.unknown_invite': 'Die uitnodiging hoort niet bij dit consult.',
  'error.media_error': 'Beeld en geluid konden niet worden gestart. We proberen het opnieuw.',
  'error.shutting_down': 'De server wordt opnieuw gestart. We proberen zo opnieuw te verbinden.',
  'error.service_unavailable': 'De dienst is even niet bereikbaar. Probeer het over een minuut opnieuw. Lukt het dan nog niet, bel dan de praktijk.',
};

const en = {
  'page.title': 'Spreekkamer – video consult',
  'brand': 'Spreekkamer',
  'skip': 'Skip to content',
  'lang.switch': 'Nederlands',
  'lang.switchLabel': 'Schakel naar Nederlands',

  'landing.pageTitle': 'Spreekkamer – video consult',
  'landing.title': 'Video consult with your care provider',
  'landing.open': 'Open the link your care provider sent you, for example in your appointment message or e-mail.',
  'landing.noAccount': 'You do not need to install anything or make an account.',
  'landing.devices': 'You need a camera and a microphone, for example on your phone, tablet or laptop.',
  'landing.help': 'Does the link not work? Contact your care provider and ask for a new link.',

  'preview.title': 'Check your camera and microphone',
  'preview.greeting': 'Hello {name}. You are joining as {role}.',
  'self.label': 'You',
  'self.cameraOff': 'Your camera is off',
  'self.micOff': 'microphone off',
  'devices.title': 'Camera and microphone',
  'devices.camera': 'Camera',
  'devices.mic': 'Microphone',
  'devices.speaker': 'Speaker',
  'devices.level': 'Sound from your microphone',
  'devices.levelHint': 'Say something. If the bar moves, we can hear you.',
  'devices.testSound': 'Play a test sound',
  'devices.none': 'Not found',
  'devices.cameraN': 'Camera {n}',
  'devices.micN': 'Microphone {n}',
  'devices.speakerN': 'Speaker {n}',
  'media.retry': 'Try camera and microphone again',
  'connectivity.title': 'Connection to the video server',
  'connectivity.checking': 'Testing the connection to the video server…',
  'connectivity.udp': 'The connection works.',
  'connectivity.tcp': 'The connection works, via a slower route. Sound and video may lag a little.',
  'connectivity.relay': 'The connection works, via a detour: your network does not allow a direct connection. Sound and video may lag a little.',
  'connectivity.failed': 'There is no connection to the video server. Check your internet connection. On a work network? Ask your IT department to open {ports}.',
  'connectivity.failedNoPorts': 'There is no connection to the video server. Check your internet connection and try again.',
  'connectivity.ports': 'UDP port {udp} and TCP port {tcp}',
  'connectivity.portsUdp': 'UDP port {udp}',
  'connectivity.portsTcp': 'TCP port {tcp}',
  'connectivity.unknown': 'We could not test the connection just now. You can still join.',
  'connectivity.skipped': 'The connection test stopped because you are joining.',
  'connectivity.again': 'Test the connection again',

  'privacy.title': 'Your privacy',
  'privacy.who': 'Only the people in this consult can see and hear you.',
  'privacy.noRecording': 'Nothing is recorded. Video, sound, chat and photos are not stored anywhere.',
  'privacy.e2eeOn': 'The call is end-to-end encrypted: only the people in it can see and hear it. Not even our server can.',
  'privacy.e2eeOff': 'Your browser cannot encrypt this call end to end. The connection is still secured. Your care provider sees this and has to agree.',
  'privacy.linkUnusable': 'Your link lacks part of its security code, so the care provider has to confirm you first.',
  'privacy.log': 'The law asks us to keep a record of who joined and when (an access log). It never contains what was said or shown.',
  'privacy.place': 'Find a quiet place where nobody can listen in.',
  'privacy.waitingNoMedia': 'In the waiting room nobody can see or hear you.',

  'clinician.checkTitle': 'Before you start',
  'clinician.checkIdentity': "Check the patient's identity: ask for their name and date of birth.",
  'clinician.checkFree': 'Ask whether the patient can speak freely, and whether anyone else is watching or listening.',
  'clinician.checkNothingStored': 'Tell them nothing is recorded and that chat and photos are gone after the call.',
  'clinician.checkPhotos': "Only share photos when it helps care. If you save a photo, put it in the patient's record and then delete it from your device.",

  'consent.text': 'By pressing ‘Join the consult’ you agree to the call as described above.',
  'join.button': 'Join the consult',
  'joining.title': 'Connecting…',
  'joining.text': 'One moment please. We are connecting.',

  'waiting.title': 'You are in the waiting room',
  'waiting.text': 'Your care provider will let you in soon. You do not need to do anything. Keep this window open.',
  'waiting.leave': 'Leave the waiting room',

  'call.title': 'Video consult',
  'call.alone': 'You are the only one in the consult for now. The others will join soon.',
  'call.sidePanel': 'Waiting room and chat',
  'call.controls': 'Call controls',
  'control.mute': 'Microphone off',
  'control.cameraOff': 'Camera off',
  'control.audioOnly': 'Audio only',
  'audioOnly.note': 'You do not see the others now, you only hear them. This helps when the connection is slow. The others can still see you. Press ‘Audio only’ again to see the others again.',
  'control.leave': 'Leave the call',
  'control.devices': 'Choose camera and microphone',

  'role.clinician': 'care provider',
  'role.patient': 'patient',
  'role.guest': 'guest',

  'tile.micOff': 'Microphone is off',
  'tile.camOff': 'Camera is off',
  'tile.speaking': 'speaking',

  'trust.verified': 'Verified',
  'trust.linkBound': 'Protected by the link',
  'trust.encrypted': 'Encrypted, not yet checked',
  'trust.pending': 'Setting up protection…',
  'trust.needsDecision': 'Waiting for the care provider',
  'trust.needsDecisionHost': 'Waiting for your decision',
  'trust.unencrypted': 'Not encrypted',
  'trust.failed': 'Not safe',
  'decision.hostText': '{name} does not have the same protected link as you, or the server changed it. So {name} does not get your video and sound yet. Do you know this person and expect them? Then admit them. In doubt? Compare the safety code first.',
  'decision.accept': 'Admit without link check',
  'decision.reject': 'Do not admit',
  'decision.peerText': 'The care provider must confirm {name} first. Until then, {name} does not get your video and sound.',
  'e2ee.failedText': 'The protection with {name} does not check out. {name} does not get your video and sound. Tell the care provider.',
  'e2ee.refused': 'Someone who is not in this consult tried to join in. This was refused: they cannot see or hear anything.',
  'e2ee.safetyLabel': 'Safety code with {name}. Read this code aloud to compare. Is it the same for both of you? Then you are really talking to each other.',
  'e2ee.verifyButton': 'The codes are the same',
  'e2ee.verifiedButton': 'Verified: the codes are the same',
  'e2ee.hostAccept': "{name}'s video and sound are not end-to-end encrypted (their browser cannot do it). The connection is still secured, but the server could see and hear them. Only continue if you accept this.",
  'e2ee.acceptButton': 'Accept and continue',
  'e2ee.peerNone': 'The call with {name} is not end-to-end encrypted.',
  'e2ee.selfNone': 'Your browser cannot encrypt this call end to end. The connection is still secured, but the server could see and hear the call. Your care provider has to agree to this. For full protection, use a recent version of Chrome, Edge, Firefox or Safari.',
  'summary.alone': 'End-to-end encrypted',
  'summary.verified': 'Everyone verified',
  'summary.linkBound': 'Protected by the link',
  'summary.encrypted': 'Encrypted, not yet checked',
  'summary.pending': 'Setting up protection…',
  'summary.needsDecision': 'Waiting for the care provider',
  'summary.needsDecisionHost': 'Waiting for your decision',
  'summary.unencrypted': 'Not everyone is encrypted',
  'summary.selfNone': 'Not encrypted',
  'summary.failed': 'Not safe: check who is in the call',

  'chat.title': 'Chat',
  'chat.notSaved': 'The chat is not saved. Everything is gone after the call.',
  'chat.unavailable': 'Chat and photos only work when the call is end-to-end encrypted.',
  'chat.label': 'Message',
  'chat.send': 'Send',
  'chat.photo': 'Share a photo',
  'chat.you': 'You',
  'chat.unknown': 'Someone',
  'chat.photoAlt': 'Photo from {name}',
  'chat.savePhoto': 'Save photo on this device',
  'chat.failed': 'The message was not sent. Please try again.',
  'chat.photoSending': 'Sending photo…',
  'chat.photoSent': 'Photo sent.',
  'chat.photo_too_large': 'This photo is too large. Choose a smaller photo.',
  'chat.photo_unreadable': 'This photo cannot be opened. Choose another photo (for example JPG or PNG).',
  'chat.photo_failed': 'The photo was not sent. Please try again.',

  'lobby.title': 'Waiting room',
  'lobby.empty': 'Nobody is waiting.',
  'lobby.reminder': 'After letting someone in: check their name and date of birth, and ask whether they can speak freely.',
  'lobby.since': 'Waiting since {time}',
  'lobby.admit': 'Let {name} in',
  'lobby.deny': 'Turn {name} away',
  'host.lock': 'Lock the consult',
  'host.locked': 'The consult is locked: nobody new can join.',
  'host.end': 'End the consult for everyone',
  'host.remove': 'Remove {name} from the consult',

  'invite.title': 'Invite someone',
  'invite.role': 'Role',
  'invite.name': 'Name (optional)',
  'invite.create': 'Create invite link',
  'invite.link': 'Link to send',
  'invite.copy': 'Copy link',
  'invite.copied': 'The link has been copied.',
  'invite.nameHint': 'Anyone who has the link can read this name. Better leave it empty.',
  'invite.revoke': 'Revoke this link',
  'invite.revoked': 'The link has been revoked. It no longer works.',
  'invite.secretFailed': 'The link could not be protected. Please try again.',
  'invite.expires': 'Valid until {time}',
  'invite.copyManual': 'Copying did not work. The link is selected: copy it with Ctrl+C (or Cmd+C).',

  'left.title': 'You left the consult',
  'left.text': 'You can close this window now.',
  'left.rejoin': 'Join again',

  'notice.joined': '{name} has joined.',
  'notice.left': '{name} has left the consult.',
  'notice.removed': '{name} was removed from the consult.',
  'notice.waiting': '{name} is in the waiting room.',
  'notice.reconnecting': 'Reconnecting… You do not need to do anything.',
  'notice.mediaReconnecting': 'Video and sound dropped for a moment. Restoring the connection…',

  'mediaHelp.chrome': 'Click the camera icon in the address bar at the top (next to the web address). Choose ‘Always allow’, then press ‘Try camera and microphone again’.',
  'mediaHelp.firefox': 'Click the camera icon to the left of the web address. Remove the block, then press ‘Try camera and microphone again’.',
  'mediaHelp.safari': 'On a Mac: in the menu choose Safari > Settings for this website and set Camera and Microphone to ‘Allow’. On iPhone or iPad: tap ‘aA’ in the address bar, then Website Settings. Then press ‘Try camera and microphone again’.',
  'mediaHelp.other': 'Allow this website to use your camera and microphone in your browser settings. Then press ‘Try camera and microphone again’.',
  'mediaHelp.inUse': 'Your camera or microphone is being used by another program. Close that program (for example another video call) and try again.',
  'mediaHelp.notFound': 'No camera or microphone was found. Connect one, or use another device.',

  'error.retry': 'Try again',
  'errorTitle.default': 'That did not work',
  'errorTitle.link': 'This link does not work',
  'errorTitle.media_denied': 'No access to camera or microphone',
  'errorTitle.media_unavailable': 'Camera or microphone not working',
  'errorTitle.connection_lost': 'No connection',
  'errorTitle.consult_ended': 'The consult has ended',
  'errorTitle.removed': 'You were removed from the consult',
  'errorTitle.replaced': 'Opened in another window',
  'error.replaced': 'You opened the consult in another window or on another device. The call continues there. You can close this window.',
  'error.unknown': 'Something went wrong (code {code}). Try opening the link again. If that does not work, contact your care provider.',
  'error.no_token': 'This link is incomplete. Open the link from your message again, or ask your care provider for a new link.',
  'error.media_denied': 'This website may not use your camera or microphone. You can still join, but the others will not see or hear you.',
  'error.media_unavailable': 'Your camera or microphone is not working. You can still join, but the others will not see or hear you.',
  'error.browser_unsupported': 'This browser cannot make video calls. Use a recent version of Chrome, Edge, Firefox or Safari.',
  'error.connection_lost': 'For five minutes we could not restore the connection to the consult. Check your internet connection and press ‘Try again’. If that does not work, open your link again or call the practice.',
  'error.removed': 'The care provider removed you from the consult. If you have questions, contact your care provider.',
  'error.denied': 'You were not let in. Contact your care provider if you think this is a mistake.',
  'error.bad_message': 'Something went wrong while sending. Please try again.',
  'error.unsupported_version': 'This page is out of date. Open it again with the link from your message.',
  'error.not_joined': 'The connection did not start properly. Open the link from your message again.',
  'error.join_timeout': 'Connecting took too long. Open the link from your message again.',
  'error.message_too_large': 'Too much was sent at once. Open the link from your message again.',
  'error.rate_limited': 'Slow down a little: too much is being sent at once. Wait a few seconds.',
  'error.token_missing': 'This link is incomplete. Open the link from your message again, or ask your care provider for a new link.',
  'error.token_too_large': 'This link is not right. Ask your care provider for a new link.',
  'error.token_malformed': 'This link is not right or was not copied completely. Open the link from your message again, or ask your care provider for a new link.',
  'error.token_bad_algorithm': 'This link is not valid. Ask your care provider for a new link.',
  'error.token_bad_signature': 'This link is not valid. Ask your care provider for a new link.',
  'error.token_expired': 'This link has expired. Ask your care provider for a new link.',
  'error.token_not_yet_valid': 'This link does not work yet. Try again later, shortly before your appointment. Is the clock on your device right?',
  'error.token_wrong_issuer': 'This link is not for this website. Ask your care provider for a new link.',
  'error.token_wrong_audience': 'This link is not for this website. Ask your care provider for a new link.',
  'error.token_missing_claim': 'This link is incomplete. Ask your care provider for a new link.',
  'error.token_bad_claim': 'This link is not right. Ask your care provider for a new link.',
  'error.token_revoked': 'This link no longer works. Ask your care provider for a new link.',
  'error.consult_full': 'This consult is full. No more people can join. Contact your care provider.',
  'error.consult_locked': 'This consult has been locked. Nobody else can join. Contact your care provider.',
  'error.consult_ended': 'This consult has ended. You can close this window.',
  'error.forbidden': 'Only the care provider can do that.',
  'error.unknown_participant': 'That person is not (or no longer) in the consult.',
  'error.unknown_invite': 'That invitation does not belong to this consult.',
  'error.media_error': 'Video and sound could not be started. We are trying again.',
  'error.shutting_down': 'The server is restarting. We will try to reconnect shortly.',
  'error.service_unavailable': 'The service cannot be reached right now. Please try again in a minute. If it still does not work, call the practice.',
};

export const DICTIONARIES = Object.freeze({ nl, en });
export const LANGUAGES = Object.freeze(['nl', 'en']);

let current = 'en';
const listeners = new Set();

/** nl* anywhere first in the browser's preference list → Dutch, else English. */
export function detectLanguage(languages = navigator.languages || [navigator.language || '']) {
  for (const l of languages) {
    const tag = String(l).toLowerCase();
    if (tag.startsWith('nl')) return 'nl';
    if (tag.startsWith('en')) return 'en';
  }
  return 'en';
}

export function getLanguage() {
  return current;
}

/**
 * The string for `key` in the active language, with `{name}` placeholders
 * filled from `params`. A missing key falls back to `fallback`, then English,
 * then the key itself (visible, so it gets noticed and fixed).
 */
export function t(key, params = {}, fallback = undefined) {
  let s = DICTIONARIES[current][key];
  if (s === undefined) s = fallback !== undefined ? fallback : (en[key] ?? key);
  return s.replace(/\{(\w+)\}/g, (m, name) => (params[name] !== undefined ? String(params[name]) : m));
}

/** Apply data-i18n / data-i18n-attr under `root`. */
export function translate(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
}

export function setLanguage(lang) {
  current = LANGUAGES.includes(lang) ? lang : 'en';
  document.documentElement.lang = current;
  translate(document);
  const sw = document.getElementById('lang-switch');
  if (sw) {
    const other = current === 'nl' ? 'en' : 'nl';
    sw.textContent = t('lang.switch');
    // The button's text is in the other language; say so for screen readers.
    sw.setAttribute('lang', other);
    sw.setAttribute('aria-label', t('lang.switchLabel'));
  }
  for (const fn of listeners) fn(current);
}

/** Call `fn(lang)` after every language change. */
export function onLanguageChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function initI18n() {
  const sw = document.getElementById('lang-switch');
  if (sw) sw.addEventListener('click', () => setLanguage(current === 'nl' ? 'en' : 'nl'));
  setLanguage(detectLanguage());
}
