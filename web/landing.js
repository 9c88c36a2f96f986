// The landing page (/) only needs translations and the language switch.
import { initI18n } from './i18n.js';

initI18n();
